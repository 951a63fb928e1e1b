import { readFileSync } from 'node:fs';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { TestIdentity } from './identity.js';
import { serverFingerprint } from './lifecycle.js';
import type { RunningTlsd, Teardown } from './tlsd.js';

/** The option under test: a primary and two workers. */
export const TWO_WORKERS = ['--workers', '2'];

/**
 * A child that holds its peer: says who it is (`child PID`, one line), then echoes until its
 * stdin ends. `exec` keeps the pid, so the line names the process tlsd logs as started.
 */
export const HOLDS = ['sh', '-c', 'echo "child $$"; exec cat'];

export const escapeRegExp = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A log line of tlsd (any -i name), for a pattern that starts after the `NAME: ` prefix. */
export const logLine = (pattern: string, flags = 'm'): RegExp => new RegExp(`^[^:\\n]+: ${pattern}$`, flags);

/** Waits for the primary's `Started worker N, pid P` lines at start; worker number to pid. */
export async function startedWorkers(tlsd: RunningTlsd, count = 2, ms = 15_000): Promise<Map<number, number>> {
  const pids = new Map<number, number>();
  for (let n = 1; n <= count; n++) pids.set(n, Number((await tlsd.waitFor(logLine(`Started worker ${n}, pid (\\d+)`), ms))[1]));
  return pids;
}

/** Which worker serves the peer tlsd calls `label` (`127.0.0.1:PORT`), from the worker's `connected as` line. */
export async function workerOf(tlsd: RunningTlsd, label: string, side: 'SERVER' | 'CLIENT' = 'SERVER', ms = 10_000): Promise<number> {
  return Number((await tlsd.waitFor(logLine(`worker (\\d+): ${escapeRegExp(label)}: connected as ${side}, peer SHA256 .*`), ms))[1]);
}

/** How many of these peers each worker serves: worker number to count. */
export async function spread(tlsd: RunningTlsd, peers: readonly Held[]): Promise<Map<number, number>> {
  const counts = new Map<number, number>();
  for (const peer of peers) {
    const worker = await workerOf(tlsd, peer.label);
    counts.set(worker, (counts.get(worker) ?? 0) + 1);
  }
  return counts;
}

/** A client's key and certificate, read once: a burst makes hundreds of connections with them. */
export interface PeerKeys {
  key: Buffer;
  cert: Buffer;
}

export const keysOf = (identity: TestIdentity): PeerKeys => ({ key: readFileSync(identity.key), cert: readFileSync(identity.cert) });

/** How one held peer's connection went. */
export interface Held {
  /** served: its child's first line came; refused: ended or closed before any; hung: neither in time. */
  outcome: 'served' | 'refused' | 'hung';
  /** The child's first line, without its newline ('' unless served). */
  line: string;
  socket: TLSSocket;
  /** How tlsd names this peer in its log: our end's address and port. */
  label: string;
  /** The SHA-256 of the certificate tlsd showed, once the handshake was done. */
  shown: string | undefined;
}

/**
 * A TLS client that connects and waits for its child's first line, then keeps the connection
 * open (destroyed at teardown). It never rejects: a refusal is an outcome the test counts.
 */
export function holdPeer(t: Teardown, port: number, keys: PeerKeys, { from = '127.0.0.1', ms = 20_000 } = {}): Promise<Held> {
  const options: ConnectionOptions & { allowHalfOpen: boolean; localAddress: string } = { host: '127.0.0.1', port, localAddress: from, rejectUnauthorized: false, allowHalfOpen: true, ...keys };
  const socket = connect(options);
  t.teardown(() => void socket.destroy());
  socket.on('error', () => {}); // a refusal may be a reset: the close that follows is what counts
  return new Promise((resolve) => {
    let label = `${from}:?`;
    let shown: string | undefined;
    let received = '';
    const finish = (outcome: Held['outcome'], line = ''): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      resolve({ outcome, line, socket, label, shown });
    };
    const onData = (chunk: Buffer): void => {
      received += chunk.toString();
      const newline = received.indexOf('\n');
      if (newline >= 0) finish('served', received.slice(0, newline));
    };
    const timer = setTimeout(() => finish('hung'), ms);
    socket.once('connect', () => (label = `${from}:${socket.localPort}`));
    socket.once('secureConnect', () => (shown = serverFingerprint(socket)));
    socket.on('data', onData);
    // Half-open, a client sees tlsd's FIN as an end, and the socket stays open until it ends too.
    socket.once('end', () => finish('refused'));
    socket.once('close', () => finish('refused'));
  });
}

/** `count` peers at once. */
export function burst(t: Teardown, count: number, port: number, keys: PeerKeys, options: { from?: string; ms?: number } = {}): Promise<Held[]> {
  return Promise.all(Array.from({ length: count }, () => holdPeer(t, port, keys, options)));
}

/** The outcomes of a burst, counted. */
export function outcomes(peers: readonly Held[]): Record<Held['outcome'], number> {
  const counts = { served: 0, refused: 0, hung: 0 };
  for (const peer of peers) counts[peer.outcome]++;
  return counts;
}

export const served = (peers: readonly Held[]): Held[] => peers.filter((peer) => peer.outcome === 'served');

/** The pid in a HOLDS child's line (`child PID`). */
export const childPid = (peer: Held): number => Number(/^child (\d+)/.exec(peer.line)?.[1]);

/** Resolves once tlsd has ended the connection (a FIN, which a half-open client sees as its end) or it is closed. */
export function ended(socket: TLSSocket): Promise<void> {
  if (socket.readableEnded || socket.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    socket.once('end', resolve);
    socket.once('close', resolve);
    socket.resume();
  });
}
