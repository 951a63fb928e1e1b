/**
 * What starting one child costs the process that starts it, the design question behind tlsd's CPU
 * per connection: `ChildProcess.spawn` from this process (optionally grown by a ballast, as a daemon
 * holding many peers grows), against asking a small helper process over IPC, which spawns the child
 * and passes its stdin and stdout back (SCM_RIGHTS). Each child is `cat`, echoes one line and ends.
 *
 * `helper-socket` is the cheaper hand-off: the helper connects to the daemon's private unix socket,
 * tags the connection with the request's id, and gives that one socket to the child as its stdin
 * and stdout (one descriptor per child in the daemon, no descriptor passing, one message each way).
 *
 *   node bench/out/spawn-cost.js [direct|helper|helper-socket] [count] [ballast MiB] [in flight]
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import net, { type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuTimes } from './proc.js';

interface Started {
  stdin: Socket;
  stdout: Socket;
  exited: Promise<void>;
}

/** The helper: spawns on request, sends the child's pipes back (or connects it to `socketPath`), reports its exit. */
function helperMain(socketPath: string | undefined): void {
  process.on('message', (message: { id: number; file: string; args: string[] }) => {
    if (socketPath) {
      const socket = net.connect(socketPath, () =>
        socket.write(`${message.id}\n`, () => {
          const child = spawn(message.file, message.args, { stdio: [socket, socket, 'inherit'] });
          socket.destroy();
          child.on('exit', (code) => process.send!({ id: message.id, exit: code }));
        }),
      );
      return;
    }
    const child = spawn(message.file, message.args, { stdio: ['pipe', 'pipe', 'inherit'] });
    child.on('error', () => process.send!({ id: message.id, error: true }));
    process.send!({ id: message.id, stream: 'stdin' }, child.stdin as unknown as Socket);
    process.send!({ id: message.id, stream: 'stdout' }, child.stdout as unknown as Socket);
    child.on('exit', (code) => process.send!({ id: message.id, exit: code }));
  });
  process.on('disconnect', () => process.exit(0));
}

function direct(): Started {
  const child = spawn('cat', [], { stdio: ['pipe', 'pipe', 'inherit'] });
  return { stdin: child.stdin as Socket, stdout: child.stdout as Socket, exited: new Promise((resolve) => child.on('close', () => resolve())) };
}

class Helper {
  private nextId = 1;
  private readonly pending = new Map<number, { stdin?: Socket; stdout?: Socket; ready: (started: Started) => void; exit: () => void; exited: Promise<void> }>();
  constructor(readonly child: ChildProcess) {
    child.on('message', (message: { id: number; stream?: 'stdin' | 'stdout'; exit?: number }, handle?: Socket) => {
      const entry = this.pending.get(message.id);
      if (!entry) return;
      if (message.stream && handle) {
        entry[message.stream] = handle;
        if (entry.stdin && entry.stdout) entry.ready({ stdin: entry.stdin, stdout: entry.stdout, exited: entry.exited });
      }
      if (message.exit !== undefined) {
        this.pending.delete(message.id);
        entry.exit();
      }
    });
  }
  /** The daemon's side of the socket hand-off: connections tagged with a request id. */
  listen(): string {
    const path = join(mkdtempSync(join(tmpdir(), 'spawn-cost-')), 'children');
    net
      .createServer((socket) => {
        let header = '';
        const onData = (data: Buffer): void => {
          header += data.toString('latin1');
          const newline = header.indexOf('\n');
          if (newline < 0) return;
          socket.off('data', onData);
          socket.pause();
          const rest = header.slice(newline + 1);
          if (rest) socket.unshift(Buffer.from(rest, 'latin1'));
          const entry = this.pending.get(Number(header.slice(0, newline)));
          if (entry) entry.ready({ stdin: socket, stdout: socket, exited: entry.exited });
        };
        socket.on('data', onData);
      })
      .listen(path)
      .unref();
    return path;
  }

  start(): Promise<Started> {
    const id = this.nextId++;
    return new Promise((ready) => {
      let exit = (): void => {};
      const exited = new Promise<void>((resolve) => (exit = resolve));
      this.pending.set(id, { ready, exit, exited });
      this.child.send({ id, file: 'cat', args: [] });
    });
  }
}

async function echo(started: Started): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    started.stdout.once('data', () => resolve());
    started.stdout.once('error', reject);
    started.stdout.resume();
    started.stdin.write('x\n');
  });
  started.stdin.end();
  started.stdout.resume();
  await started.exited;
}

async function main(): Promise<void> {
  const [mode = 'direct', countText = '300', ballastText = '0', inFlightText = '8'] = process.argv.slice(2);
  const count = Number(countText);
  const ballast = Array.from({ length: Number(ballastText) }, () => Buffer.alloc(1024 * 1024, 1));
  let helper: Helper | undefined;
  if (mode.startsWith('helper')) {
    const child = fork(fileURLToPath(import.meta.url), ['--helper'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    helper = new Helper(child);
    if (mode === 'helper-socket') child.send({ socketPath: helper.listen() });
  }
  const start = (): Promise<Started> => (helper ? helper.start() : Promise.resolve(direct()));
  for (let i = 0; i < 20; i++) await echo(await start()); // warm-up
  const ownBefore = process.cpuUsage();
  const helperBefore = helper ? cpuTimes(helper.child.pid!).own : 0;
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: Number(inFlightText) }, async () => {
      while (next++ < count) await echo(await start());
    }),
  );
  const wall = performance.now() - t0;
  const own = process.cpuUsage(ownBefore);
  const helperMs = helper ? cpuTimes(helper.child.pid!).own - helperBefore : 0;
  const perChild = (us: number): string => `${(us / count / 1000).toFixed(3)} ms`;
  console.log(
    `${mode}, ${count} children, ballast ${ballast.length} MiB, RSS ${(process.memoryUsage().rss / 1048576).toFixed(0)} MiB: ` +
      `this process ${perChild(own.user + own.system)} per child (user ${perChild(own.user)}, system ${perChild(own.system)})` +
      (helper ? `, helper ${perChild(helperMs * 1000)}` : '') +
      `, ${((count / wall) * 1000).toFixed(0)} children/s`,
  );
  helper?.child.disconnect();
}

if (process.argv.includes('--helper')) process.once('message', (first: { socketPath?: string } & Record<string, unknown>) => {
  helperMain(first.socketPath);
  if (!first.socketPath) process.emit('message', first, undefined);
});
else await main();
