/**
 * The loads, as a client sees them: fresh connections that echo a line, one connection pushing a
 * stream through `cat`, one reading a file, connections held open, silent TCP connections. Every
 * loop is bounded in count and in time.
 */
import { createHash } from 'node:crypto';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { percentile } from './stats.js';

export interface Target {
  port: number;
  /** Mutual TLS with this identity; plain TCP when absent. */
  identity?: { key: Buffer; cert: Buffer };
}

/**
 * One TLS context per identity, as a long-lived client keeps: making one per connection parses
 * the key and certificate again each time, generator CPU taken from the server under test.
 */
const contexts = new WeakMap<NonNullable<Target['identity']>, tls.SecureContext>();

function contextOf(identity: NonNullable<Target['identity']>): tls.SecureContext {
  let context = contexts.get(identity);
  if (!context) contexts.set(identity, (context = tls.createSecureContext({ key: identity.key, cert: identity.cert })));
  return context;
}

function connect(target: Target): { socket: net.Socket; ready: string } {
  const socket = target.identity
    ? tls.connect({ host: '127.0.0.1', port: target.port, secureContext: contextOf(target.identity), rejectUnauthorized: false })
    : net.connect({ host: '127.0.0.1', port: target.port });
  socket.setNoDelay(true);
  return { socket, ready: target.identity ? 'secureConnect' : 'connect' };
}

function countError(errors: Record<string, number>, error: string): void {
  errors[error] = (errors[error] ?? 0) + 1;
}

function describe(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? (error as Error).message ?? String(error);
}

interface Echo {
  ok: boolean;
  latencyMs: number;
  error?: string;
  protocol?: string;
}

/** One fresh connection: send a line, read it back, end, and wait for the server to close. */
function echoOnce(target: Target, index: number, timeoutMs: number): Promise<Echo> {
  return new Promise((resolve) => {
    const start = performance.now();
    const line = `bench ${index} ${start.toFixed(3)}\n`;
    const { socket, ready } = connect(target);
    let received = '';
    let latencyMs = -1;
    let error: string | undefined;
    let protocol: string | undefined;
    let settled = false;
    const finish = (why?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (why && latencyMs < 0) error ??= why;
      resolve({ ok: latencyMs >= 0 && error === undefined, latencyMs, error, protocol });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.once(ready, () => {
      protocol = (socket as tls.TLSSocket).getProtocol?.() ?? 'tcp';
      socket.write(line);
    });
    socket.on('data', (data: Buffer) => {
      if (latencyMs >= 0) return;
      received += data.toString('latin1');
      if (received.length < line.length) return;
      latencyMs = performance.now() - start;
      if (received !== line) error = 'echo mismatch';
      socket.end();
    });
    socket.on('error', (e) => {
      if (latencyMs < 0) error ??= describe(e);
    });
    socket.on('close', () => finish('closed before the echo'));
  });
}

export interface RateResult {
  done: number;
  failed: number;
  wallMs: number;
  perSecond: number;
  p50: number;
  p99: number;
  errors: Record<string, number>;
  protocol?: string;
  /** The generator's own CPU time (user + system) over the load: the share of the cores not left to the server. */
  generatorCpuMs: number;
}

/**
 * `count` fresh connections, `inFlight` at a time. Stops early after `maxFailures` failures or at
 * `capMs`, whichever comes first.
 */
export async function rate(target: Target, count: number, inFlight: number, timeoutMs: number, capMs: number, maxFailures = Infinity): Promise<RateResult> {
  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  let failed = 0;
  let next = 0;
  let protocol: string | undefined;
  const start = performance.now();
  const cpuBefore = process.cpuUsage();
  const deadline = start + capMs;
  const worker = async (): Promise<void> => {
    while (next < count && failed < maxFailures && performance.now() < deadline) {
      const echo = await echoOnce(target, next++, timeoutMs);
      protocol ??= echo.protocol;
      if (echo.ok) latencies.push(echo.latencyMs);
      else {
        failed++;
        countError(errors, echo.error ?? 'unknown');
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker));
  const wallMs = performance.now() - start;
  const cpu = process.cpuUsage(cpuBefore);
  return {
    done: latencies.length,
    failed,
    wallMs,
    perSecond: latencies.length / (wallMs / 1000),
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    errors,
    protocol,
    generatorCpuMs: (cpu.user + cpu.system) / 1000,
  };
}

export type StreamStatus = 'ok' | 'deadlock' | 'mismatch' | 'short' | 'error' | 'timeout';

export interface StreamResult {
  status: StreamStatus;
  mibPerSecond?: number;
  sent: number;
  received: number;
  seconds: number;
  detail?: string;
}

const MiB = 1024 * 1024;
const WRITE_SIZE = 64 * 1024;

/**
 * Pushes `total` bytes (the `pattern` over and over) through the server's `cat` while reading the
 * echo, then half-closes and reads to the end. Checked by length and SHA-256. A stream with no
 * progress either way for `stallMs` while bytes are still owed is a deadlock.
 */
export function bulk(target: Target, pattern: Buffer, total: number, expectedHash: string, stallMs: number, capMs: number): Promise<StreamResult> {
  return stream(target, { pattern, total }, total, expectedHash, stallMs, capMs);
}

/** Reads what the server's child (`cat FILE`) sends, to the end: `total` bytes with this hash. */
export function download(target: Target, total: number, expectedHash: string, stallMs: number, capMs: number): Promise<StreamResult> {
  return stream(target, undefined, total, expectedHash, stallMs, capMs);
}

function stream(
  target: Target,
  upload: { pattern: Buffer; total: number } | undefined,
  expected: number,
  expectedHash: string,
  stallMs: number,
  capMs: number,
): Promise<StreamResult> {
  return new Promise((resolve) => {
    const { socket, ready } = connect(target);
    const hash = createHash('sha256');
    let sent = 0;
    let received = 0;
    let start = performance.now();
    let lastProgress = start;
    let settled = false;
    const finish = (status: StreamStatus, detail?: string): void => {
      if (settled) return;
      settled = true;
      clearInterval(watch);
      socket.destroy();
      const seconds = (performance.now() - start) / 1000;
      resolve({ status, sent, received, seconds, detail, mibPerSecond: status === 'ok' ? expected / MiB / seconds : undefined });
    };
    const watch = setInterval(() => {
      const now = performance.now();
      if (now - lastProgress > stallMs) finish('deadlock', `no progress for ${stallMs} ms with ${sent - received} bytes in flight`);
      else if (now - start > capMs) finish('timeout', `not done after ${capMs} ms`);
    }, 100);
    const pump = (): void => {
      if (!upload || settled) return;
      while (sent < upload.total) {
        const offset = sent % upload.pattern.length;
        const size = Math.min(WRITE_SIZE, upload.total - sent, upload.pattern.length - offset);
        sent += size;
        lastProgress = performance.now();
        if (!socket.write(upload.pattern.subarray(offset, offset + size))) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    socket.once(ready, () => {
      start = lastProgress = performance.now();
      pump();
    });
    socket.on('data', (data: Buffer) => {
      hash.update(data);
      received += data.length;
      lastProgress = performance.now();
    });
    socket.on('end', () => {
      if (received !== expected) return finish('short', `received ${received} of ${expected} bytes`);
      const digest = hash.digest('hex');
      if (digest !== expectedHash) return finish('mismatch', `SHA-256 ${digest}, expected ${expectedHash}`);
      finish('ok');
    });
    socket.on('error', (error) => finish('error', describe(error)));
    socket.on('close', () => finish(received === expected ? 'error' : 'short', `closed after ${received} of ${expected} bytes`));
  });
}

/** Connections held open (each has echoed one line, so its child is running), and silent ones. */
export class Holder {
  private readonly held = new Set<net.Socket>();
  private readonly silent = new Set<net.Socket>();
  dropped = 0;

  get count(): number {
    return this.held.size;
  }

  /** Opens connections until `target` are held, `inFlight` at a time; stops after `maxFailures` or `capMs`. */
  async fill(target: Target, total: number, inFlight: number, timeoutMs: number, capMs: number, maxFailures: number): Promise<{ held: number; failed: number; errors: Record<string, number> }> {
    const errors: Record<string, number> = {};
    let failed = 0;
    let pending = 0;
    const deadline = performance.now() + capMs;
    const worker = async (): Promise<void> => {
      while (this.held.size + pending < total && failed < maxFailures && performance.now() < deadline) {
        pending++;
        const error = await this.openOne(target, timeoutMs);
        pending--;
        if (error !== undefined) {
          failed++;
          countError(errors, error);
        }
      }
    };
    await Promise.all(Array.from({ length: inFlight }, worker));
    return { held: this.held.size, failed, errors };
  }

  private openOne(target: Target, timeoutMs: number): Promise<string | undefined> {
    return new Promise((resolve) => {
      const { socket, ready } = connect(target);
      let received = '';
      let done = false;
      const settle = (error?: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (error === undefined) {
          this.held.add(socket);
          socket.on('close', () => {
            if (this.held.delete(socket)) this.dropped++;
          });
        } else socket.destroy();
        resolve(error);
      };
      const timer = setTimeout(() => settle('timeout'), timeoutMs);
      socket.once(ready, () => socket.write('hold\n'));
      socket.on('data', (data: Buffer) => {
        received += data.toString('latin1');
        if (received.length >= 5) settle(received === 'hold\n' ? undefined : 'echo mismatch');
      });
      socket.on('error', (error) => settle(describe(error)));
      socket.on('close', () => settle('closed before the echo'));
    });
  }

  /** Opens `count` plain TCP connections that never send a byte; waits until they are connected. */
  async openSilent(port: number, count: number, timeoutMs: number): Promise<number> {
    const opened = await Promise.all(
      Array.from(
        { length: count },
        () =>
          new Promise<boolean>((resolve) => {
            const socket = net.connect({ host: '127.0.0.1', port });
            const timer = setTimeout(() => resolve(false), timeoutMs);
            socket.on('error', () => resolve(false));
            socket.once('connect', () => {
              clearTimeout(timer);
              this.silent.add(socket);
              resolve(true);
            });
          }),
      ),
    );
    return opened.filter(Boolean).length;
  }

  /** Closes every held and silent connection. */
  release(): void {
    for (const socket of [...this.held, ...this.silent]) socket.destroy();
    this.held.clear();
    this.silent.clear();
  }
}
