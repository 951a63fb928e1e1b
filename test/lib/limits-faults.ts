import { readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { connect as netConnect, createServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { SPAWN_HELPER_ARGUMENTS } from '../../src/launch/spawn-helper.js';
import { makeIdentity, tempDir, type TestIdentity } from './identity.js';
import type { RunningTlsd, Teardown } from './tlsd.js';

/**
 * A plain TCP connection to tlsd on loopback, destroyed at teardown; it sends nothing by itself.
 * `from` is the loopback address it comes from (any of 127.0.0.0/8 works on Linux).
 */
export async function rawConnect(t: Teardown, port: number, { from = '127.0.0.1', ms = 10_000 } = {}): Promise<Socket> {
  const socket = netConnect({ host: '127.0.0.1', port, localAddress: from });
  t.teardown(() => void socket.destroy());
  socket.on('error', () => {}); // a reset from tlsd is an outcome the test looks at, not a crash
  const timer = setTimeout(() => socket.destroy(new Error(`no TCP connection within ${ms} ms`)), ms);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('close', () => reject(new Error('closed before connecting')));
    });
  } finally {
    clearTimeout(timer);
  }
  return socket;
}

/** Follows a socket's end: `closed` turns true once it is fully closed, whoever closed it. */
export interface CloseWatch {
  readonly closed: boolean;
  /** Date.now() when it closed. */
  readonly closedAt: number | undefined;
  readonly done: Promise<void>;
}

export function watchClose(socket: Socket): CloseWatch {
  let closedAt = socket.destroyed ? Date.now() : undefined;
  const done = closedAt !== undefined ? Promise.resolve() : new Promise<void>((resolve) => socket.once('close', () => resolve()));
  void done.then(() => (closedAt ??= Date.now()));
  socket.resume(); // whatever tlsd sends (an alert) must not stop us from seeing its FIN
  return {
    get closed() {
      return closedAt !== undefined;
    },
    get closedAt() {
      return closedAt;
    },
    done,
  };
}

/** The first bytes a real TLS client sends: a ClientHello as Node's tls.connect writes it. */
export function realClientHello(): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const catcher = createServer((socket) => {
      socket.once('data', (chunk: Buffer) => {
        socket.destroy();
        catcher.close();
        resolve(chunk);
      });
    });
    catcher.on('error', reject);
    catcher.listen(0, '127.0.0.1', () => {
      const { port } = catcher.address() as AddressInfo;
      const client = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false });
      client.on('error', () => {}); // the catcher hangs up on it: expected
    });
  });
}

/** Polls a condition for a bounded time; on failure says what was awaited and shows tlsd's log. */
export async function waitUntil(condition: () => boolean, what: string, tlsd: RunningTlsd, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms; log:\n${tlsd.stderr()}`);
    await sleep(50);
  }
}

export function countMatches(text: string, pattern: RegExp): number {
  return text.match(new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`))?.length ?? 0;
}

/**
 * How many refusals of `reason` tlsd logged: each line in full, and each summary (`N more
 * connection(s) refused …, the last: … connection refused: REASON`) for its N, since a flood of
 * one kind is counted rather than listed.
 */
export function refusalsLogged(text: string, reason: RegExp): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!reason.test(line)) continue;
    const summary = /(\d+) more connection\(s\) refused in the last/.exec(line);
    total += summary ? Number(summary[1]) : 1;
  }
  return total;
}

/** Files in `dir` whose names start with `prefix`: one marker per child that got that far. */
export function markers(dir: string, prefix: string): string[] {
  return readdirSync(dir).filter((name) => name.startsWith(prefix));
}

export interface ProcessEntry {
  pid: number;
  /** One letter as in /proc/PID/stat: R, S, Z … */
  state: string;
}

/** The processes whose parent is `parent`, straight from /proc (zombies included). */
export function childrenOf(parent: number): ProcessEntry[] {
  const found: ProcessEntry[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // it exited while we looked
    }
    // The command name may hold spaces and parentheses: the fields that follow come after the last ')'.
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(ppid) === parent) found.push({ pid: Number(name), state: state! });
  }
  // tlsd's spawn helper is not a session's child; the children it started for tlsd are.
  return found.flatMap((child) => (isSpawnHelper(child.pid) ? childrenOf(child.pid) : [child]));
}

/** tlsd's spawn helper, known by the arguments it is started with (src/launch/spawn-helper.ts). */
export function isSpawnHelper(pid: number): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
    return argv[1] === SPAWN_HELPER_ARGUMENTS[0] && argv[2] === SPAWN_HELPER_ARGUMENTS[1];
  } catch {
    return false;
  }
}

/** A process's open descriptors and what each points at, as `ls -l /proc/PID/fd` shows them. */
export function openFds(pid: number | 'self'): Map<number, string> {
  const fds = new Map<number, string>();
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    try {
      fds.set(Number(name), readlinkSync(`/proc/${pid}/fd/${name}`));
    } catch {
      // closed while we listed (our own directory descriptor, for one)
    }
  }
  return fds;
}

/** Sends SIGUSR1 and waits for the Status line it brings: the peers and pending handshakes tlsd counts. */
export async function statusOf(tlsd: RunningTlsd, ms = 10_000): Promise<{ peers: number; handshakes: number }> {
  const pattern = /Status: (\d+) peer\(s\), (\d+) handshake\(s\) in progress/g;
  const seen = countMatches(tlsd.stderr(), pattern);
  tlsd.proc.kill('SIGUSR1');
  await waitUntil(() => countMatches(tlsd.stderr(), pattern) > seen, 'a Status line after SIGUSR1', tlsd, ms);
  const last = [...tlsd.stderr().matchAll(pattern)].at(-1)!;
  return { peers: Number(last[1]), handshakes: Number(last[2]) };
}

/**
 * Asks for the status (SIGUSR1) until it reads `expected`, for at most `ms`, and returns the last:
 * connections tlsd has not accepted yet (the kernel completed them) are not counted yet.
 */
export async function settledStatus(tlsd: RunningTlsd, expected: { peers: number; handshakes: number }, ms = 10_000): Promise<{ peers: number; handshakes: number }> {
  const deadline = Date.now() + ms;
  for (;;) {
    const status = await statusOf(tlsd);
    if ((status.peers === expected.peers && status.handshakes === expected.handshakes) || Date.now() > deadline) return status;
    await sleep(100);
  }
}

/** Rejects with `what` if `promise` has not settled within `ms`: a broken case fails, never hangs. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves once what the socket received holds `text`; rejects with what came after `ms`. */
export function readUntil(socket: TLSSocket, text: string, ms = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = '';
    const onData = (chunk: Buffer): void => {
      received += chunk.toString();
      if (received.includes(text)) finish();
    };
    const finish = (error?: Error): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      if (error) reject(error);
      else resolve(received);
    };
    const timer = setTimeout(() => finish(new Error(`no ${JSON.stringify(text)} within ${ms} ms; got ${JSON.stringify(received)}`)), ms);
    socket.on('data', onData);
  });
}

export interface Attempt {
  /** Did the TLS handshake complete? */
  secure: boolean;
  /** Everything the server sent before the connection closed. */
  data: string;
  /** The client's own port: tlsd names the peer by it in its log. */
  localPort: number | undefined;
}

/**
 * A TLS client that may be turned away: connects, sends `input` and half-closes if it gets that
 * far, and resolves once the connection is closed, whichever side closed it and however.
 */
export function attempt(port: number, identity: TestIdentity, input: string, ms = 20_000): Promise<Attempt> {
  return new Promise((resolve, reject) => {
    const result: Attempt = { secure: false, data: '', localPort: undefined };
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      rejectUnauthorized: false,
      key: readFileSync(identity.key),
      cert: readFileSync(identity.cert),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connection still open after ${ms} ms; got ${JSON.stringify(result.data)}`));
    }, ms);
    socket.once('connect', () => (result.localPort = socket.localPort));
    socket.once('secureConnect', () => {
      result.secure = true;
      socket.end(input);
    });
    socket.on('data', (chunk: Buffer) => (result.data += chunk.toString()));
    socket.on('error', () => {}); // a refusal may well be a reset: the close that follows is what counts
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(result);
    });
  });
}

// Syslog is not what these tests look at: keep the messages on stderr only.
export const quietSyslog = { TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log' };

/** A server and two clients, in a directory removed when the test file ends. */
export function cast(t: Teardown): Record<'server' | 'alice' | 'bob', TestIdentity> {
  const ids = tempDir();
  t.teardown(() => rmSync(ids, { recursive: true, force: true }));
  return { server: makeIdentity(ids, 'server'), alice: makeIdentity(ids, 'alice'), bob: makeIdentity(ids, 'bob') };
}
