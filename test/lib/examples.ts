import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { connect as connectTcp, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TLSSocket } from 'node:tls';
import { connectTls } from './client.js';
import { tempDir, type TestIdentity } from './identity.js';
import { installedPrograms, root, watch, type RunningTlsd, type Teardown } from './tlsd.js';

/** A file of an example, run from the checkout as a user would after cloning it. */
export const exampleFile = (example: string, name: string): string => join(root, 'examples', example, name);

/** A temporary directory removed when the test that made it ends. */
export function scratch(t: Teardown, prefix: string): string {
  const dir = tempDir(prefix);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * The environment the examples run in: PATH starts with the installed programs (installedPrograms);
 * syslog goes to a socket that does not exist, so that every log line lands on stderr.
 */
export function exampleEnv(parent: string): NodeJS.ProcessEnv {
  const dir = installedPrograms(join(parent, 'bin'));
  return { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}`, TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log' };
}

/** A port nobody listens on right now (the kernel's pick), for programs that cannot pick one. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** `promise`, or a rejection with `why()` after `ms`. */
export async function within<T>(promise: Promise<T>, ms: number, why: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(why())), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The process groups started here and not known to be gone. Teardown stops them; if the test
 * process itself is stopped (tap's timeout sends SIGTERM), they are killed on the way out, so that
 * no daemon outlives its test.
 */
const groups = new Set<ChildProcess>();
const killAll = (): void => {
  for (const proc of groups) killGroup(proc, 'SIGKILL');
};
process.once('exit', killAll);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
  process.once(signal, () => {
    killAll();
    process.kill(process.pid, signal);
  });
}

function track(proc: ChildProcess): void {
  groups.add(proc);
  proc.once('close', () => groups.delete(proc));
}

/** Kills a detached child's whole process group; gone already is fine. */
function killGroup(proc: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (proc.pid !== undefined) process.kill(-proc.pid, signal);
  } catch {
    // gone already
  }
}

/**
 * Stops a process group at teardown: SIGTERM first (tlsd ends its sessions and waits for them),
 * SIGKILL to the whole group if it is not gone after 10 s.
 */
function stopAtTeardown(t: Teardown, proc: ChildProcess, exited: Promise<unknown>): void {
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) killGroup(proc, 'SIGTERM');
    const timer = setTimeout(() => killGroup(proc, 'SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    killGroup(proc, 'SIGKILL'); // whatever the group left behind
  });
}

export interface ServiceOptions {
  identity: TestIdentity;
  /** What follows `--` on tlsd's command line. */
  command: string[];
  env: NodeJS.ProcessEnv;
}

/**
 * Runs `tlsd -e -b 127.0.0.1 -k KEY -c CERT -- COMMAND` by name, as the READMEs do (on a random
 * port), in its own process group, and waits for its Listening line.
 */
export async function startService(t: Teardown, options: ServiceOptions): Promise<RunningTlsd> {
  const args = ['-e', '-b', '127.0.0.1', '-k', options.identity.key, '-c', options.identity.cert, '--', ...options.command];
  const proc = spawn('tlsd', args, { stdio: ['ignore', 'ignore', 'pipe'], env: options.env, detached: true });
  track(proc);
  const running = watch(proc);
  stopAtTeardown(t, proc, running.exited);
  const match = await running.waitFor(/Listening on \S+, port (\d+)/, 20_000);
  running.port = Number(match[1]);
  return running;
}

/** Starts `ncat -l --broker 127.0.0.1 PORT`, as the chat's README says, and waits until it accepts. */
export async function startBroker(t: Teardown, port: number): Promise<ChildProcess> {
  const proc = spawn('ncat', ['-l', '--broker', '127.0.0.1', String(port)], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  track(proc);
  const running = watch(proc);
  stopAtTeardown(t, proc, running.exited);
  for (let attempt = 0; ; attempt++) {
    const socket = await openTcp(port).catch(() => undefined);
    if (socket) {
      socket.destroy();
      return proc;
    }
    if (attempt >= 100 || proc.exitCode !== null) throw new Error(`ncat --broker did not start on port ${port}: ${running.stderr()}`);
    await sleep(100);
  }
}

function openTcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connectTcp({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });
}

/** A connection whose every received byte is kept, and which a test can wait on. */
export interface Conversation {
  /** Everything received so far. */
  bytes(): Buffer;
  text(): string;
  write(data: string | Buffer): void;
  /**
   * Resolves once the text received from character `from` on holds `wanted`; rejects with what
   * came after `ms`.
   */
  waitFor(wanted: string | RegExp, from?: number, ms?: number): Promise<void>;
  /**
   * Resolves once the other side has ended its stream (or the connection is gone); rejects with
   * what came if that takes more than `ms`.
   */
  closed(ms?: number): Promise<void>;
  /** Ends our side (the other side sees the end of its input). */
  end(): void;
  /** Drops the connection at once, as a killed client does. */
  destroy(): void;
}

function converse(t: Teardown, socket: Socket | TLSSocket, who: string): Conversation {
  const chunks: Buffer[] = [];
  const waiters: Array<() => void> = [];
  const wake = (): void => {
    for (const waiter of waiters.splice(0)) waiter();
  };
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    wake();
  });
  socket.on('error', () => {}); // seen as a close
  let open = true;
  const closed = new Promise<void>((resolve) => {
    const over = (): void => {
      open = false;
      wake();
      resolve();
    };
    // With half-close (allowHalfOpen), the end of the other side's stream comes long before 'close'.
    socket.once('end', over);
    socket.once('close', over);
  });
  t.teardown(() => void socket.destroy());
  const bytes = (): Buffer => Buffer.concat(chunks);
  const text = (): string => bytes().toString('utf8');
  return {
    bytes,
    text,
    write: (data) => void socket.write(data),
    closed: (ms = 20_000) => within(closed, ms, () => `${who}: still open after ${ms} ms; got ${JSON.stringify(text())}`),
    end: () => void socket.end(),
    destroy: () => void socket.destroy(),
    waitFor(wanted, from = 0, ms = 20_000) {
      const found = (): boolean => {
        const seen = text().slice(from);
        return typeof wanted === 'string' ? seen.includes(wanted) : wanted.test(seen);
      };
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${who}: no ${String(wanted)} within ${ms} ms; got ${JSON.stringify(text())}`)), ms);
        const check = (): void => {
          if (found()) {
            clearTimeout(timer);
            resolve();
          } else if (!open) {
            clearTimeout(timer);
            reject(new Error(`${who}: closed before ${String(wanted)}; got ${JSON.stringify(text())}`));
          } else waiters.push(check);
        };
        check();
      });
    },
  };
}

/** A user's TLS connection (Node's tls, with the user's own certificate). */
export async function talk(t: Teardown, port: number, identity: TestIdentity, who: string): Promise<Conversation> {
  return converse(t, await connectTls(port, identity), who);
}

/** A plain TCP connection, e.g. to look at what goes through the chat broker. */
export async function tcp(t: Teardown, port: number, who: string): Promise<Conversation> {
  return converse(t, await openTcp(port), who);
}

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

export interface Command {
  proc: ChildProcess;
  stdout(): Buffer;
  /** Resolves once stdout holds `wanted`; rejects with what came after `ms`. */
  waitFor(wanted: string, ms?: number): Promise<void>;
  /** Resolves when the command has exited, or kills it and rejects after `ms`. */
  finished(ms?: number): Promise<Finished>;
}

/**
 * Runs a command (a script, openssl) in its own process group, with stdin a pipe to write to, or
 * the given bytes, or empty; the group is killed at teardown.
 */
export function runCommand(t: Teardown, command: string, args: string[], options: { env: NodeJS.ProcessEnv; stdin?: Buffer | 'pipe' }): Command {
  const proc = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], env: options.env, detached: true });
  track(proc);
  const chunks: Buffer[] = [];
  let stderr = '';
  const waiters: Array<() => void> = [];
  proc.stdout.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    for (const waiter of waiters.splice(0)) waiter();
  });
  proc.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  proc.stdin.on('error', () => {}); // it may exit before reading everything
  if (options.stdin !== 'pipe') proc.stdin.end(options.stdin);
  const exit = new Promise<Finished>((resolve, reject) => {
    proc.once('error', reject);
    proc.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
      for (const waiter of waiters.splice(0)) waiter();
      resolve({ code, signal, stdout: Buffer.concat(chunks), stderr });
    });
  });
  t.teardown(async () => {
    killGroup(proc, 'SIGKILL');
    await exit.catch(() => undefined);
  });
  const stdout = (): Buffer => Buffer.concat(chunks);
  return {
    proc,
    stdout,
    waitFor(wanted, ms = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${command}: no ${JSON.stringify(wanted)} within ${ms} ms; stdout ${JSON.stringify(stdout().toString())}, stderr ${stderr}`)), ms);
        const check = (): void => {
          if (stdout().includes(wanted)) {
            clearTimeout(timer);
            resolve();
          } else if (proc.exitCode !== null || proc.signalCode !== null) {
            clearTimeout(timer);
            reject(new Error(`${command} exited before ${JSON.stringify(wanted)}; stdout ${JSON.stringify(stdout().toString())}, stderr ${stderr}`));
          } else waiters.push(check);
        };
        check();
      });
    },
    finished(ms = 30_000) {
      return within(exit, ms, () => {
        killGroup(proc, 'SIGKILL');
        return `${command} did not exit within ${ms} ms; stdout ${JSON.stringify(stdout().toString())}, stderr ${stderr}`;
      });
    },
  };
}
