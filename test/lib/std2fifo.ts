import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { bin, type Teardown } from './tlsd.js';

export interface Running {
  proc: ChildProcess;
  /** Everything on stdout so far. */
  stdout(): Buffer;
  stderr(): string;
  /** Resolves once stdout holds at least `length` bytes; rejects after `ms`. */
  stdoutLength(length: number, ms?: number): Promise<Buffer>;
  exited: Promise<number | null>;
}

export function watchOutput(proc: ChildProcess): Running {
  const chunks: Buffer[] = [];
  let size = 0;
  let stderr = '';
  const waiters: Array<() => void> = [];
  proc.stdout?.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    size += chunk.length;
    for (const waiter of waiters.splice(0)) waiter();
  });
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => proc.once('close', (status) => resolve(status)));
  return {
    proc,
    stdout: () => Buffer.concat(chunks),
    stderr: () => stderr,
    exited,
    stdoutLength(length, ms = 10_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${size} of ${length} bytes within ${ms} ms; stderr: ${stderr}`)), ms);
        const check = (): void => {
          if (size >= length) {
            clearTimeout(timer);
            resolve(Buffer.concat(chunks));
          } else waiters.push(check);
        };
        check();
      });
    },
  };
}

/** Runs bin/std2fifo with stdin and stdout as pipes; killed at teardown if still running. */
export function startStd2fifo(t: Teardown, args: string[], env: NodeJS.ProcessEnv): Running {
  const proc = spawn(bin('std2fifo'), args, {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log', ...env },
  });
  t.teardown(() => void (proc.exitCode === null && proc.signalCode === null && proc.kill('SIGKILL')));
  return watchOutput(proc);
}

/** A shell command on the FIFO side, as local programs use them; killed at teardown. */
export function shell(t: Teardown, script: string, ...args: string[]): Running {
  // Its own process group, so that killing it kills a `cat` it started too.
  const proc = spawn('sh', ['-c', script, 'sh', ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  t.teardown(() => killGroup(proc));
  return watchOutput(proc);
}

export function killGroup(proc: ChildProcess): void {
  try {
    if (proc.pid !== undefined) process.kill(-proc.pid, 'SIGKILL');
  } catch {
    // gone already
  }
}

/** Resolves when `path` exists (std2fifo made it), polling for at most 10 s. */
export async function appears(path: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(path); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  if (!existsSync(path)) throw new Error(`${path} did not appear`);
}

/** What the descriptors of process `pid` point to. */
export function openFiles(pid: number | string): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).flatMap((fd) => {
    try {
      return [readlinkSync(join(dir, fd))];
    } catch {
      return []; // closed meanwhile (readdir's own descriptor)
    }
  });
}

/**
 * Resolves once std2fifo's start is over: it holds the `out` FIFO in `dir`, the last thing it
 * takes. (That `out` exists says only that it was made: a swap then would meet the start's checks,
 * not a later open's.) Polls for at most 10 s.
 */
export async function started(running: Running, dir: string): Promise<void> {
  const out = join(dir, 'out');
  const holds = (): boolean => running.proc.pid !== undefined && openFiles(running.proc.pid).includes(out);
  for (let i = 0; i < 200 && !holds(); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  if (!holds()) throw new Error(`std2fifo did not take ${out} within 10 s; stderr: ${running.stderr()}`);
}
