import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestIdentity } from './identity.js';

export const root = fileURLToPath(new URL('../..', import.meta.url));

/** The programs as `npm install -g` links them: package.json's "bin", name to file. */
export const installed: Record<string, string> = Object.fromEntries(
  Object.entries((JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { bin: Record<string, string> }).bin).map(([name, file]) => [name, `${root}${file}`]),
);

/** A program's launcher, the file package.json "bin" names: what an installed user runs. */
export function bin(name: string): string {
  const file = installed[name];
  if (file === undefined) throw new Error(`package.json "bin" has no ${name}`);
  return file;
}

/** A program's bundle (scripts/bundle.mjs), for the tests that show what its launcher adds. */
export const bundle = (name: string): string => `${root}dist/${name}.cjs`;

/**
 * `dir`, made, with a symlink per installed program, for PATH: scripts find `tlsd`, `fp2alias` and
 * `std2fifo` by name, through the same files as after `npm install -g`, without installing anything.
 */
export function installedPrograms(dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (const [name, file] of Object.entries(installed)) symlinkSync(file, join(dir, name));
  return dir;
}

/** Anything with tap's teardown, so helpers clean up after the test that started them. */
export interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export interface RunningTlsd {
  proc: ChildProcess;
  port: number;
  /** Everything tlsd and its children wrote to stderr so far. */
  stderr(): string;
  /** Resolves with the first stderr match, waiting at most `ms`; rejects with the log otherwise. */
  waitFor(pattern: RegExp, ms?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or signal name) once tlsd has exited. */
  exited: Promise<number | string>;
}

export interface StartOptions {
  /** Passed as -k and -c; without one tlsd picks its default identity. */
  identity?: TestIdentity;
  /** Extra options before the command. */
  options?: string[];
  command: string[];
  env?: NodeJS.ProcessEnv;
  /** 'pipe' to write dial lines; default 'ignore' (/dev/null). */
  stdin?: 'pipe' | 'ignore';
  /** Wait for the Listening line (default true). */
  listening?: boolean;
  /** Descriptors tlsd inherits, target number to ours, as from a shell's `exec 300<file`. */
  inherit?: Record<number, number>;
}

/** Runs tlsd's launcher on loopback with -e and a random port, and kills it at teardown. */
export async function startTlsd(t: Teardown, start: StartOptions): Promise<RunningTlsd> {
  const args = ['-e', '-b', '127.0.0.1', ...(start.identity ? ['-k', start.identity.key, '-c', start.identity.cert] : []), ...(start.options ?? []), '--', ...start.command];
  const stdio: Array<'ignore' | 'pipe' | number> = [start.stdin ?? 'ignore', 'ignore', 'pipe'];
  for (const [target, fd] of Object.entries(start.inherit ?? {})) {
    while (stdio.length < Number(target)) stdio.push('ignore');
    stdio[Number(target)] = fd;
  }
  const spawnOptions: SpawnOptions = { stdio, env: { ...process.env, ...start.env } };
  const proc = spawn(bin('tlsd'), args, spawnOptions);
  const running = watch(proc);
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await running.exited;
    }
  });
  if (start.listening ?? true) {
    const match = await running.waitFor(/Listening on \S+, port (\d+)/);
    running.port = Number(match[1]);
  }
  return running;
}

/** Collects a process's stderr and lets a test wait for a line in it. */
export function watch(proc: ChildProcess): RunningTlsd {
  let text = '';
  const waiters: Array<() => void> = [];
  proc.stderr?.setEncoding('utf8');
  proc.stderr?.on('data', (chunk: string) => {
    text += chunk;
    for (const waiter of waiters.splice(0)) waiter();
  });
  const exited = once(proc, 'exit').then(([code, signal]) => (code ?? signal) as number | string);
  const running: RunningTlsd = {
    proc,
    port: 0,
    stderr: () => text,
    exited,
    waitFor(pattern, ms = 10_000) {
      return new Promise((resolve, reject) => {
        const deadline = setTimeout(() => reject(new Error(`timed out waiting for ${pattern} in:\n${text}`)), ms);
        const check = (): void => {
          const match = text.match(pattern);
          if (match) {
            clearTimeout(deadline);
            resolve(match);
          } else if (proc.exitCode !== null || proc.signalCode !== null) {
            clearTimeout(deadline);
            reject(new Error(`process exited before ${pattern} appeared:\n${text}`));
          } else waiters.push(check);
        };
        void exited.then(() => setImmediate(check));
        check();
      });
    },
  };
  return running;
}
