import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, openSync, rmSync } from 'node:fs';
import { tempDir } from './identity.js';
import type { Teardown } from './tlsd.js';

/** A temporary directory removed when the test that made it ends. */
export function scratchDir(t: Teardown, prefix = 'tlsd-test-'): string {
  const dir = tempDir(prefix);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface ClientExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ExternalClient {
  proc: ChildProcess;
  /** Everything written to stdout so far. */
  stdout(): Buffer;
  /** Everything written to stderr so far. */
  stderr(): string;
  /** Resolves once stdout holds `text`; rejects with what was seen after `ms`. */
  waitForOutput(text: string, ms?: number): Promise<void>;
  /** Resolves once the process has exited and its output is all read. */
  exited: Promise<ClientExit>;
}

export interface ClientOptions {
  /** 'pipe' to write to it; a path to redirect stdin from that file, as `< file` does; default /dev/null. */
  stdin?: 'pipe' | { file: string };
}

/** Starts a real TLS client (openssl, gnutls-cli, ncat …) and kills it at teardown if still running. */
export function startClient(t: Teardown, command: string, args: string[], options: ClientOptions = {}): ExternalClient {
  const input = options.stdin;
  const fd = typeof input === 'object' ? openSync(input.file, 'r') : undefined;
  const stdio: StdioOptions = [fd ?? (input === 'pipe' ? 'pipe' : 'ignore'), 'pipe', 'pipe'];
  const proc = spawn(command, args, { stdio });
  if (fd !== undefined) closeSync(fd); // the child has its own copy
  const chunks: Buffer[] = [];
  let stderr = '';
  const listeners: Array<() => void> = [];
  proc.stdout?.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    for (const listener of listeners.splice(0)) listener();
  });
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  proc.stdin?.on('error', () => {}); // a client may exit before reading everything
  const exited = new Promise<ClientExit>((resolve, reject) => {
    proc.once('error', reject); // not installed, not executable
    proc.once('close', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal }));
  });
  let running = true;
  const stopped = exited.then(
    () => void (running = false),
    () => void (running = false),
  );
  t.teardown(async () => {
    if (running) {
      proc.kill('SIGKILL');
      await stopped;
    }
  });
  const stdout = (): Buffer => Buffer.concat(chunks);
  return {
    proc,
    stdout,
    stderr: () => stderr,
    exited,
    waitForOutput(text, ms = 15_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${command}: no ${JSON.stringify(text)} within ${ms} ms; stdout: ${JSON.stringify(stdout().toString())}, stderr: ${stderr}`)), ms);
        const check = (): void => {
          if (stdout().includes(text)) {
            clearTimeout(timer);
            resolve();
          } else if (running) listeners.push(check);
          else {
            clearTimeout(timer);
            reject(new Error(`${command} exited before ${JSON.stringify(text)}; stdout: ${JSON.stringify(stdout().toString())}, stderr: ${stderr}`));
          }
        };
        void stopped.then(check);
        check();
      });
    },
  };
}

/** Waits for a client to exit by itself; kills it and rejects after `ms`. */
export async function clientExit(client: ExternalClient, ms = 20_000): Promise<ClientExit> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      client.proc.kill('SIGKILL');
      reject(new Error(`${String(client.proc.spawnfile)} did not exit within ${ms} ms; stdout: ${JSON.stringify(client.stdout().toString())}, stderr: ${client.stderr()}`));
    }, ms);
  });
  try {
    return await Promise.race([client.exited, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
