/**
 * The load generator: a separate Node process the runner drives over IPC, one request at a time,
 * so that its own work never shows in the server's /proc figures and a hung load can be killed.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { bulk, download, Holder, rate, type Target } from './loads.js';

export type Request =
  | { op: 'init'; key: string; cert: string; patternSeed: number }
  | { op: 'rate'; port: number; tls: boolean; count: number; inFlight: number; timeoutMs: number; capMs: number; maxFailures?: number }
  | { op: 'bulk'; port: number; tls: boolean; total: number; stallMs: number; capMs: number }
  | { op: 'download'; port: number; tls: boolean; total: number; hash: string; stallMs: number; capMs: number }
  | { op: 'hold'; port: number; tls: boolean; total: number; inFlight: number; timeoutMs: number; capMs: number; maxFailures: number }
  | { op: 'held' }
  | { op: 'silent'; port: number; count: number; timeoutMs: number }
  | { op: 'release' };

/** The bulk pattern: 4 MiB of pseudo-random bytes, the same in the runner and here for a seed. */
export function bulkPattern(seed: number): Buffer {
  const pattern = Buffer.alloc(4 * 1024 * 1024);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < pattern.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    pattern.writeUInt32LE(x >>> 0, i);
  }
  return pattern;
}

/** SHA-256 of `total` bytes of the pattern repeated. */
export function patternHash(pattern: Buffer, total: number): string {
  const hash = createHash('sha256');
  for (let done = 0; done < total; ) {
    const size = Math.min(pattern.length, total - done);
    hash.update(pattern.subarray(0, size));
    done += size;
  }
  return hash.digest('hex');
}

let identity: { key: Buffer; cert: Buffer } | undefined;
let pattern: Buffer = Buffer.alloc(0);
const holder = new Holder();

function target(port: number, useTls: boolean): Target {
  return { port, identity: useTls ? identity : undefined };
}

async function handle(request: Request): Promise<unknown> {
  switch (request.op) {
    case 'init':
      identity = { key: readFileSync(request.key), cert: readFileSync(request.cert) };
      pattern = bulkPattern(request.patternSeed);
      return {};
    case 'rate':
      return rate(target(request.port, request.tls), request.count, request.inFlight, request.timeoutMs, request.capMs, request.maxFailures);
    case 'bulk':
      return bulk(target(request.port, request.tls), pattern, request.total, patternHash(pattern, request.total), request.stallMs, request.capMs);
    case 'download':
      return download(target(request.port, request.tls), request.total, request.hash, request.stallMs, request.capMs);
    case 'hold':
      return holder.fill(target(request.port, request.tls), request.total, request.inFlight, request.timeoutMs, request.capMs, request.maxFailures);
    case 'held':
      return { held: holder.count, dropped: holder.dropped };
    case 'silent':
      return { opened: await holder.openSilent(request.port, request.count, request.timeoutMs) };
    case 'release':
      holder.release();
      return {};
  }
}

if (process.send) {
  process.on('message', (message: { id: number; request: Request }) => {
    handle(message.request).then(
      (result) => process.send!({ id: message.id, result }),
      (error: unknown) => process.send!({ id: message.id, error: String((error as Error)?.stack ?? error) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}
