import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestIdentity } from './identity.js';
import { installedPrograms, root, watch, type RunningTlsd, type Teardown } from './tlsd.js';

/** The example's files, run from the checkout as a user would after cloning it. */
export const example = (name: string): string => join(root, 'examples', 'p2p-im', name);

/** The installed programs, for PATH: the scripts call `tlsd` and `std2fifo` by name. */
export function programsDir(parent: string): string {
  return installedPrograms(join(parent, 'bin'));
}

/** Kills a detached child's whole process group (the daemon and its sessions, or sh and its cat). */
export function killGroup(proc: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    if (proc.pid !== undefined) process.kill(-proc.pid, signal);
  } catch {
    // gone already
  }
}

export interface ImNode extends RunningTlsd {
  dir: string;
  /** Simulates a crash: SIGKILL to tlsd and every session at once; resolves once tlsd is gone. */
  crash(): Promise<void>;
}

export interface NodeOptions {
  identity: TestIdentity;
  dir: string;
  env: NodeJS.ProcessEnv;
  /** 0 for a random one. */
  port: number;
}

/**
 * Starts tlsd-im.sh (with -e, so that its log and its sessions' lines reach stderr) in its own
 * process group, waits for its Listening line, and kills the group at teardown.
 */
export async function startNode(t: Teardown, options: NodeOptions): Promise<ImNode> {
  const proc = spawn(example('tlsd-im.sh'), ['-e'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
    env: {
      ...options.env,
      TLSD_IM_DIR: options.dir,
      TLSD_IM_PORT: String(options.port),
      TLSD_IM_BIND: '127.0.0.1',
      TLSD_IM_KEY: options.identity.key,
      TLSD_IM_CERT: options.identity.cert,
    },
  });
  const running = watch(proc);
  t.teardown(async () => {
    killGroup(proc);
    await running.exited;
  });
  const match = await running.waitFor(/Listening on \S+, port (\d+)/, 15_000);
  running.port = Number(match[1]);
  return {
    ...running,
    dir: options.dir,
    async crash() {
      killGroup(proc);
      await running.exited;
    },
  };
}

export interface ImClient {
  /** Types one line. */
  type(line: string): void;
  output(): string;
  /** Resolves with the first match in the output from `from` on; rejects after `ms` with the output. */
  waitFor(pattern: RegExp, ms?: number, from?: number): Promise<RegExpMatchArray>;
}

/** Starts tlsd-im-client.mjs with pipes (as a script would drive it); killed at teardown. */
export function startClient(t: Teardown, args: string[], env: NodeJS.ProcessEnv): ImClient {
  const proc = spawn(process.execPath, [example('tlsd-im-client.mjs'), ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
  let text = '';
  const waiters: Array<() => void> = [];
  const wake = (chunk: string): void => {
    text += chunk;
    for (const waiter of waiters.splice(0)) waiter();
  };
  proc.stdout.setEncoding('utf8').on('data', wake);
  proc.stderr.setEncoding('utf8').on('data', (chunk: string) => wake(`stderr: ${chunk}`));
  const exited = new Promise<void>((resolve) => proc.once('close', () => resolve()));
  void exited.then(() => wake(''));
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
  });
  return {
    type: (line) => void proc.stdin.write(`${line}\n`),
    output: () => text,
    waitFor(pattern, ms = 15_000, from = 0) {
      return new Promise((resolve, reject) => {
        const deadline = setTimeout(() => reject(new Error(`timed out waiting for ${pattern} in the client's output:\n${text}`)), ms);
        const check = (): void => {
          const match = text.slice(from).match(pattern);
          if (match) {
            clearTimeout(deadline);
            resolve(match);
          } else if (proc.exitCode !== null || proc.signalCode !== null) {
            clearTimeout(deadline);
            reject(new Error(`the client exited before ${pattern} appeared:\n${text}`));
          } else waiters.push(check);
        };
        check();
      });
    },
  };
}

export interface CommandResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command to completion with stdin from /dev/null. It is killed after `timeoutMs`, with its
 * own children (it leads a process group), so that a broken case fails instead of hanging.
 */
export function runCommand(command: string, args: string[], options: { env: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<CommandResult> {
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env, detached: true });
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    proc.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => killGroup(proc), options.timeoutMs ?? 15_000);
    proc.once('error', reject);
    proc.once('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/** `echo TEXT > FIFO`, as a user types it; bounded, since an open FIFO with no reader blocks. */
export async function writeFifo(path: string, text: string, env: NodeJS.ProcessEnv): Promise<void> {
  const result = await runCommand('sh', ['-c', 'printf "%s\\n" "$1" > "$2"', 'sh', text, path], { env });
  if (result.status !== 0) throw new Error(`cannot write to ${path}: ${result.stderr}`);
}

/** `cat FIFO`: one message in message mode. Bounded, so a message that never comes fails. */
export async function readFifo(path: string, env: NodeJS.ProcessEnv): Promise<string> {
  const result = await runCommand('cat', [path], { env });
  if (result.status !== 0) throw new Error(`cat ${path}: ${result.signal ?? result.status} ${result.stderr}`);
  return result.stdout;
}

/** Whether nobody holds the flock on `path` (checked with flock(1), as the scripts take it). */
export function lockIsFree(path: string): boolean {
  return spawnSync('flock', ['-n', path, 'true'], { timeout: 10_000 }).status === 0;
}

export function isFifo(path: string): boolean {
  return existsSync(path) && lstatSync(path).isFIFO();
}

/** Polls `condition` every 50 ms for at most `ms`; rejects with `what` if it never holds. */
export async function until(what: string, condition: () => boolean, ms = 15_000): Promise<void> {
  for (const deadline = Date.now() + ms; !condition(); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}
