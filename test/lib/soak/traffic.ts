import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { TestIdentity } from '../identity.js';
import type { CaseContext } from './case.js';
import { resetSocket } from '../tcp-reset.js';

/** A small seeded generator (mulberry32): the same seed gives the same run, every time. */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }

  bytes(length: number): Buffer {
    const words = new Uint32Array(Math.ceil(length / 4));
    for (let i = 0; i < words.length; i++) words[i] = (this.next() * 4294967296) >>> 0;
    return Buffer.from(words.buffer, 0, length);
  }
}

const keyCache = new Map<string, { key: Buffer; cert: Buffer }>();

/** Key and certificate of an identity, read once: thousands of sessions need not read them again. */
export function credentials(identity: TestIdentity): { key: Buffer; cert: Buffer } {
  let cached = keyCache.get(identity.key);
  if (!cached) keyCache.set(identity.key, (cached = { key: readFileSync(identity.key), cert: readFileSync(identity.cert) }));
  return cached;
}

/**
 * What every TLS client here connects with: tlsd on loopback, whatever certificate it shows (the
 * checks compare fingerprints themselves), and the identity's key and certificate if any.
 */
export function clientOptions(port: number, identity: TestIdentity | undefined, extra: ConnectionOptions & { allowHalfOpen?: boolean } = {}): ConnectionOptions {
  return { host: '127.0.0.1', port, rejectUnauthorized: false, ...(identity ? credentials(identity) : {}), ...extra };
}

/**
 * Connects and resolves once the handshake is done (the client's side of it); rejects if the
 * connection closes first or `ms` pass. Socket errors (a reset, an alert) are ignored from then on
 * too: callers look at what arrives and at 'close'.
 */
export function secureClient(options: ConnectionOptions, ms = 15_000): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect(options);
    socket.on('error', () => {}); // a reset or an alert: the close that follows is what counts
    const timer = setTimeout(() => {
      socket.destroy();
      options.socket?.destroy();
      reject(new Error(`no handshake within ${ms} ms`));
    }, ms);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('close', closed);
      resolve(socket);
    });
    const closed = (): void => {
      clearTimeout(timer);
      reject(new Error('closed before the handshake completed'));
    };
    socket.once('close', closed);
  });
}

/** Writes a chunk; when the socket's buffer is full, waits for 'drain', at most `ms`. */
export async function writeOrWait(socket: Socket, chunk: Buffer, ms: number): Promise<void> {
  if (socket.write(chunk)) return;
  await within(ms, (done) => socket.once('drain', done), (done) => socket.off('drain', done));
}

/** Resolves with the first bytes the socket receives, or undefined if none come within `ms`. */
export function firstData(socket: Socket, ms: number): Promise<Buffer | undefined> {
  return within<Buffer>(ms, (done) => socket.once('data', done), (done) => socket.off('data', done));
}

/** Waits for one event (`on` subscribes, `off` unsubscribes) or `ms`, whichever comes first. */
function within<T>(ms: number, on: (done: (value: T) => void) => void, off: (done: (value: T) => void) => void): Promise<T | undefined> {
  return new Promise((resolve) => {
    const done = (value?: T): void => {
      clearTimeout(timer);
      off(done);
      resolve(value);
    };
    const timer = setTimeout(done, ms);
    on(done);
  });
}

export interface Outcome {
  ok: boolean;
  /** The handshake never completed, or the connection closed without a byte of reply. */
  refused: boolean;
  sent: number;
  received: number;
  /** Bytes that went in and did not come back (or came back altered), 0 when ok or refused. */
  lost: number;
  ms: number;
  /** The server certificate's SHA-256, as this session saw it. */
  serverFingerprint?: string;
  error?: string;
}

export interface EchoOptions {
  connect?: ConnectionOptions;
  /** Abandon the session after this long (default 60 s). */
  ms?: number;
  /** Called once the handshake is done, before anything is sent (a barrier, say). */
  afterHandshake?: (socket: TLSSocket) => Promise<void>;
  /**
   * Half-close only once the whole echo is back: the way to talk to a tlsd with -s, whose signal
   * goes to the child with the end of its input, whether or not it has written it all back.
   */
  endAfterEcho?: boolean;
}

/**
 * One session through an echoing child (`cat`): sends `payload` with backpressure, half-closes,
 * reads everything back until the server's end, and compares the SHA-256 of both directions.
 */
export function echoSession(port: number, identity: TestIdentity | undefined, payload: Buffer, options: EchoOptions = {}): Promise<Outcome> {
  const started = Date.now();
  return new Promise((resolve) => {
    const hash = createHash('sha256');
    let received = 0;
    let secure = false;
    let settled = false;
    let serverFingerprint: string | undefined;
    const socket = connect(clientOptions(port, identity, { allowHalfOpen: true, ...options.connect }));
    const finish = (error?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const intact = received === payload.length && hash.digest('hex') === sha256(payload);
      const refused = !secure || (received === 0 && payload.length > 0);
      const ok = intact && error === undefined;
      const lost = ok || refused ? 0 : intact ? 0 : received < payload.length ? payload.length - received : payload.length;
      resolve({ ok, refused: !ok && refused, sent: payload.length, received, lost, ms: Date.now() - started, ...(serverFingerprint ? { serverFingerprint } : {}), ...(error === undefined ? {} : { error }) });
    };
    const timer = setTimeout(() => finish(`no end within ${options.ms ?? 60_000} ms (${received} of ${payload.length} bytes back)`), options.ms ?? 60_000);
    socket.on('secureConnect', () => {
      secure = true;
      serverFingerprint = socket.getPeerX509Certificate()?.fingerprint256.replace(/:/g, '').toLowerCase();
      void (async () => {
        try {
          await options.afterHandshake?.(socket);
          await writeAll(socket, payload);
          if (options.endAfterEcho) await echoed;
          socket.end();
        } catch (error) {
          finish(`while sending: ${(error as Error).message}`);
        }
      })();
    });
    let allBack: () => void = () => {};
    const echoed = new Promise<void>((resolve) => (allBack = resolve));
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      received += chunk.length;
      if (received >= payload.length) allBack();
    });
    socket.on('end', () => finish());
    socket.on('error', (error) => finish(error.message));
    socket.on('close', () => finish(received === payload.length ? undefined : 'closed without an end'));
  });
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Writes in 64 KiB pieces, waiting for 'drain' whenever the socket says its buffer is full. */
export async function writeAll(socket: TLSSocket, data: Buffer): Promise<void> {
  for (let offset = 0; offset < data.length; offset += 65536) {
    if (socket.destroyed) throw new Error('connection closed while sending');
    if (!socket.write(data.subarray(offset, offset + 65536))) {
      await new Promise<void>((resolve, reject) => {
        const done = (): void => {
          socket.off('drain', done).off('close', closed);
          resolve();
        };
        const closed = (): void => {
          socket.off('drain', done);
          reject(new Error('connection closed while sending'));
        };
        socket.once('drain', done).once('close', closed);
      });
    }
  }
}

/** Runs `count` tasks with at most `width` at once; each gets its index. */
export async function pool(width: number, count: number, task: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(width, count) }, worker));
}

/** Adds a session's outcome to the row: a try, and a failure with its bytes lost when not ok. */
export function tally(ctx: CaseContext, outcome: Outcome, { refusalIsFailure = true } = {}): void {
  ctx.tries++;
  ctx.bytesLost += outcome.lost;
  if (!outcome.ok && (refusalIsFailure || !outcome.refused)) ctx.sessionFailures++;
}

export interface Latency {
  count: number;
  p50: number;
  p95: number;
  max: number;
}

export function latency(samples: number[]): Latency {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { count: sorted.length, p50: at(0.5), p95: at(0.95), max: sorted[sorted.length - 1] ?? 0 };
}

export function describeLatency(l: Latency): string {
  return `p50 ${l.p50} ms, p95 ${l.p95} ms, max ${l.max} ms over ${l.count}`;
}

export interface CanaryReport {
  sessions: number;
  failures: Outcome[];
  lost: number;
  latency: Latency;
}

/**
 * Ordinary clients that keep using tlsd while a case does something nasty to it: `workers`
 * sessions at a time, each a random payload echoed and checked, until stopped.
 */
export function canary(port: number, identity: TestIdentity, options: { workers?: number; seed?: number; maxBytes?: number; pauseMs?: number; connect?: ConnectionOptions; endAfterEcho?: boolean } = {}): { stop(): Promise<CanaryReport> } {
  const rng = new Rng(options.seed ?? 7);
  const outcomes: Outcome[] = [];
  let stopping = false;
  const worker = async (): Promise<void> => {
    while (!stopping) {
      const payload = rng.bytes(rng.int(1, options.maxBytes ?? 16_384));
      outcomes.push(await echoSession(port, identity, payload, { ms: 30_000, connect: { servername: 'echo.test', ...options.connect }, endAfterEcho: options.endAfterEcho }));
      await new Promise((resolve) => setTimeout(resolve, options.pauseMs ?? 20));
    }
  };
  const running = Promise.all(Array.from({ length: options.workers ?? 2 }, worker));
  return {
    async stop() {
      stopping = true;
      await running;
      const failures = outcomes.filter((o) => !o.ok);
      return { sessions: outcomes.length, failures, lost: outcomes.reduce((sum, o) => sum + o.lost, 0), latency: latency(outcomes.map((o) => o.ms)) };
    },
  };
}

/** Checks and notes what the canary saw: every session served intact. */
export function reportCanary(ctx: CaseContext, report: CanaryReport): void {
  ctx.tries += report.sessions;
  ctx.bytesLost += report.lost;
  ctx.sessionFailures += report.failures.length;
  ctx.note(`other sessions meanwhile: ${report.sessions}, ${report.failures.length} failed, ${describeLatency(report.latency)}`);
  ctx.check(report.sessions > 0 && report.failures.length === 0, 'other sessions are unaffected', report.failures.slice(0, 3).map((o) => o.error ?? `got ${o.received} of ${o.sent}`).join('; '));
}

export interface Conversation {
  secure: boolean;
  /** The server ended its side (FIN, after close_notify or not). */
  ended: boolean;
  data: Buffer;
  error?: string;
  ms: number;
}

/**
 * A client that sends `payload` (then half-closes), reads whatever comes back, and resolves once
 * the connection is closed, however it closed; never rejects.
 */
export function converse(port: number, identity: TestIdentity | undefined, options: { servername?: string; payload?: Buffer; ms?: number; connect?: ConnectionOptions } = {}): Promise<Conversation> {
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const result: Omit<Conversation, 'data' | 'ms'> = { secure: false, ended: false };
    const socket = connect(clientOptions(port, identity, { allowHalfOpen: true, ...(options.servername ? { servername: options.servername } : {}), ...options.connect }));
    const timer = setTimeout(() => {
      result.error ??= `still open after ${options.ms ?? 30_000} ms`;
      socket.destroy();
    }, options.ms ?? 30_000);
    socket.on('secureConnect', () => {
      result.secure = true;
      writeAll(socket, options.payload ?? Buffer.alloc(0)).then(
        () => socket.end(),
        () => {}, // the server hung up: 'close' tells the rest
      );
    });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => {
      result.ended = true;
      socket.end();
    });
    socket.on('error', (error) => (result.error ??= error.message));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ ...result, data: Buffer.concat(chunks), ms: Date.now() - started });
    });
  });
}

export interface Resettable {
  tls: TLSSocket;
  raw: Socket;
  /** Ends the connection with a TCP reset, as a crashing peer does. */
  reset(): void;
}

/** A TLS client over a TCP socket kept at hand, so that it can end with a reset rather than a FIN. */
export async function resettable(port: number, identity: TestIdentity, servername?: string, ms = 15_000): Promise<Resettable> {
  const raw = netConnect({ host: '127.0.0.1', port });
  raw.on('error', () => {});
  // after a reset the TLS layer's opinion does not matter: secureClient ignores its errors
  const tls = await secureClient(clientOptions(port, identity, { socket: raw, allowHalfOpen: true, ...(servername ? { servername } : {}) }), ms);
  return { tls, raw, reset: () => resetSocket(raw, tls) };
}
