// The spawn helper (src/native/spawn-helper.c) driven directly, as tlsd drives it, and with
// requests tlsd never sends: each gets its one-line answer and the helper goes on serving.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import t, { type Test } from 'tap';
import { builtSpawnHelper } from '../src/native-programs.js';

interface Helper {
  send(text: string | Buffer): void;
  /** The next report line, or 'timeout'. */
  next(ms?: number): Promise<string>;
  /** What the child of `token` wrote to its stdout, once it closed it. */
  output(token: string): Promise<string>;
  /** Resolves with the helper's exit code once its stdin is closed. */
  close(): Promise<number | null>;
}

async function startHelper(t: Test): Promise<Helper> {
  const name = `tlsd-spawn-test-${process.pid}-${randomBytes(4).toString('hex')}`;
  const outputs = new Map<string, (socket: Socket) => void>();
  const early = new Map<string, Socket>();
  const server = createServer((socket) => {
    socket.on('error', () => {}); // a child's end closing early is not this test's failure
    let header = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      header = Buffer.concat([header, chunk]);
      if (header.length < 34) return;
      socket.off('data', onData);
      const token = header.subarray(0, 32).toString('latin1');
      if (header[32] !== 'o'.charCodeAt(0)) return; // the probe and the stdin connections: kept open, unused
      socket.pause();
      if (header.length > 34) socket.unshift(header.subarray(34));
      const waiting = outputs.get(token);
      if (waiting) waiting(socket);
      else early.set(token, socket);
    };
    socket.on('data', onData);
  });
  await new Promise<void>((resolve) => server.listen(`\0${name}`, resolve));
  t.teardown(() => void server.close());
  // A process group of its own, so that teardown also ends a child a failed test left running.
  const helper = spawn(builtSpawnHelper, [name], { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
  t.teardown(() => {
    try {
      process.kill(-helper.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  createInterface({ input: helper.stdout! }).on('line', (line) => {
    lines.push(line);
    wake?.();
  });
  const next = async (ms = 5_000): Promise<string> => {
    if (lines.length === 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ms);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
    return lines.shift() ?? 'timeout';
  };
  return {
    send: (text) => helper.stdin!.write(text),
    next,
    output: (token) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no complete output from the child of ${token} within 10 s`)), 10_000);
        const collect = (socket: Socket): void => {
          let text = '';
          socket.setEncoding('latin1').on('data', (chunk: string) => (text += chunk));
          socket.on('end', () => {
            clearTimeout(timer);
            resolve(text);
          });
          socket.resume();
        };
        const socket = early.get(token);
        if (socket) collect(socket);
        else outputs.set(token, collect);
      }),
    close: () =>
      new Promise((resolve) => {
        helper.once('exit', (code) => resolve(code));
        helper.stdin!.end();
      }),
  };
}

/** A request as tlsd frames it (src/daemon/spawn-helper.ts): header line, then NUL-ended fields. */
function request(id: number, token: string, argv: string[], env: string[]): Buffer {
  const body = Buffer.from([...argv, ...env].map((field) => `${field}\0`).join(''));
  return Buffer.concat([Buffer.from(`S ${id} ${token} ${argv.length} ${env.length} ${body.length}\n`), body]);
}

const token = (n: number): string => n.toString(16).padStart(32, '0');

t.test('a request is answered with P, its output and X; K kills', async (t) => {
  const helper = await startHelper(t);
  t.equal(await helper.next(), 'R', 'ready');
  helper.send(request(1, token(1), ['sh', '-c', 'echo "$GREETING $0"'], ['GREETING=hello']));
  t.match(await helper.next(), /^P 1 \d+$/, 'started');
  t.equal(await helper.output(token(1)), 'hello sh\n', 'argv and the added environment reach the child');
  t.equal(await helper.next(), 'X 1 0 -', 'its exit status');
  helper.send(request(2, token(2), ['sleep', '30'], []));
  t.match(await helper.next(), /^P 2 \d+$/);
  helper.send('K 2 15\n');
  t.equal(await helper.next(), 'X 2 - 15', 'killed by SIGTERM');
  t.equal(await helper.close(), 0, 'leaves when its stdin ends');
});

t.test('requests tlsd never sends: an E each, and the helper goes on', async (t) => {
  const helper = await startHelper(t);
  t.equal(await helper.next(), 'R');
  const body = (text: string): string => `${text.length}\n${text}`;
  const malformed: [string, string][] = [
    [`S 10 ${token(10)} 0 0 ${body('a\0')}`, 'no argv'],
    [`S 11 ${token(11)}x 1 0 ${body('a\0')}`, 'a token of 33 characters'],
    [`S 12 ${token(12)} 1 0 ${body('ab')}`, 'a body without its final NUL'],
    [`S 13 ${token(13)} 3 0 ${body('a\0b\0')}`, 'fewer fields than counted'],
    [`S 14 ${token(14)} 4611686018427387904 4611686018427387903 ${body('a\0'.repeat(32))}`, 'counts that would overflow'],
    [`S 15\n`, 'a header cut short'],
  ];
  for (const [text, what] of malformed) {
    helper.send(text);
    const id = /^S (\d+)/.exec(text)![1];
    t.equal(await helper.next(), `E ${id} 22`, `${what}: EINVAL`);
  }
  // More K lines than one read takes (64 KiB), for children it does not have: nothing to answer.
  helper.send('K 999 15\n'.repeat(10_000));
  helper.send(request(20, token(20), ['echo', 'still here'], []));
  t.match(await helper.next(), /^P 20 \d+$/, 'a good request after all of them is served');
  t.equal(await helper.output(token(20)), 'still here\n');
  t.equal(await helper.next(), 'X 20 0 -');
  helper.send(request(21, token(21), ['tlsd-test-no-such-command'], []));
  t.equal(await helper.next(), 'E 21 2', 'a command not found: ENOENT');
  t.equal(await helper.close(), 0);
});
