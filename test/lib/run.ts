import { spawn, type SpawnOptions } from 'node:child_process';
import { bin } from './tlsd.js';

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  /** Written to stdin, which is then closed; none: stdin is /dev/null. */
  input?: string | Buffer;
  cwd?: string;
  /** Killed (SIGKILL) after this long; default 20 s. */
  timeoutMs?: number;
  /** Run this file (a symlink to the launcher, say) instead of the launcher itself. */
  file?: string;
}

/**
 * Runs one of our programs (its launcher, or `options.file`) to completion and
 * collects its output. Syslog goes to a socket that does not exist unless the caller says otherwise, so messages land
 * on stderr and the test's host log stays clean.
 */
export function runProgram(name: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const spawnOptions: SpawnOptions = {
    stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    env: { TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log', ...process.env, ...options.env },
    cwd: options.cwd,
  };
  const proc = spawn(options.file ?? bin(name), args, spawnOptions);
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => proc.kill('SIGKILL'), options.timeoutMs ?? 20_000);
    proc.once('error', reject);
    proc.once('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
    if (options.input !== undefined) {
      proc.stdin?.on('error', () => {}); // the program may exit before reading it all
      proc.stdin?.end(options.input);
    }
  });
}

/**
 * Stderr without the start-up lines tlsd logs first, as the original did (`Initializing`, then
 * `Attempting to bind: …`): what a failed start says after them. Only at the start, in that order.
 */
export function afterStartLines(stderr: string): string {
  return stderr.replace(/^[^:\n]+: Initializing\n(?:[^:\n]+: Attempting to bind: [^\n]*\n)?/, '');
}
