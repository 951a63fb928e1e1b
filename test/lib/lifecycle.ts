import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestIdentity } from './identity.js';
import { bin, watch, type RunningTlsd, type Teardown } from './tlsd.js';
import { resetSocket } from './tcp-reset.js';

/** The SHA-256 of the certificate the server presented, in tlsd's notation (lowercase hex). */
export function serverFingerprint(socket: TLSSocket): string {
  const certificate = socket.getPeerX509Certificate();
  if (!certificate) throw new Error('the server presented no certificate');
  return createHash('sha256').update(certificate.raw).digest('hex');
}

export interface Resettable {
  tls: TLSSocket;
  /** Ends the TCP connection with RST, as a crashed peer or a middlebox does. */
  reset(): void;
}

/** A TLS client over a TCP socket of our own, so that the test can reset it (TLSSocket cannot). */
export function resettable(t: Teardown, port: number, identity: TestIdentity, ms = 10_000): Promise<Resettable> {
  return new Promise((resolve, reject) => {
    const raw = netConnect({ host: '127.0.0.1', port });
    raw.on('error', () => {}); // after a reset nothing the socket says matters
    t.teardown(() => void raw.destroy());
    const options: ConnectionOptions & { allowHalfOpen: boolean } = {
      socket: raw,
      rejectUnauthorized: false,
      allowHalfOpen: true,
      key: readFileSync(identity.key),
      cert: readFileSync(identity.cert),
    };
    const tls = tlsConnect(options);
    tls.on('error', () => {});
    const timer = setTimeout(() => {
      raw.destroy();
      reject(new Error(`no handshake within ${ms} ms`));
    }, ms);
    tls.once('secureConnect', () => {
      clearTimeout(timer);
      resolve({ tls, reset: () => resetSocket(raw, tls) });
    });
    tls.once('close', () => {
      clearTimeout(timer);
      reject(new Error('closed before the handshake completed'));
    });
  });
}

/** How a plain TCP connection attempt to loopback ends: 'connected', or the error code. */
export function tcpAttempt(port: number, ms = 5_000): Promise<string> {
  return new Promise((resolve) => {
    const socket = netConnect({ host: '127.0.0.1', port });
    const finish = (outcome: string): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => finish('timeout'), ms);
    socket.once('connect', () => finish('connected'));
    socket.once('error', (error: NodeJS.ErrnoException) => finish(error.code ?? error.message));
  });
}

/**
 * The real bin/tlsd with exactly these arguments (startTlsd always adds -e), killed at teardown;
 * the caller waits for whatever tells it tlsd is up.
 */
export function spawnTlsd(t: Teardown, args: string[], env: NodeJS.ProcessEnv): RunningTlsd {
  return spawnWatched(t, bin('tlsd'), args, { env });
}

export interface WatchedOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** 'pipe' to write to it; default /dev/null. */
  stdin?: 'pipe' | 'ignore';
  /** 'pipe' to read it; default /dev/null. */
  stdout?: 'pipe' | 'ignore';
}

/** Any program (tlsd, or `timeout … tlsd`, or a reader), its stderr watched, killed at teardown. */
export function spawnWatched(t: Teardown, command: string, args: string[], options: WatchedOptions = {}): RunningTlsd {
  const proc = spawn(command, args, { stdio: [options.stdin ?? 'ignore', options.stdout ?? 'ignore', 'pipe'], env: { ...process.env, ...options.env }, cwd: options.cwd });
  const running = watch(proc);
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await running.exited;
    }
  });
  return running;
}

/** Resolves true once `pid` is gone or a zombie (its new parent may not reap at once), within `ms`. */
export async function processGone(pid: number, ms = 5_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    let state: string | undefined;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    } catch {
      return true;
    }
    if (state === 'Z' || state === 'X') return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}
