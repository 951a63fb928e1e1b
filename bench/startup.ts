/**
 * Start-up time of the project's programs as whole processes, as tlsd's examples run them once per
 * connection: tlsd to its `Listening` line, tlsd-keygen making an EC identity, fp2alias looking up a known alias, std2fifo with its
 * stdin closed at once; `node -e 0` as the floor any Node program pays.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Files } from './servers.js';
import { median } from './stats.js';

interface Run {
  file: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** Done when this line shows on stderr (the process is then stopped); else when it exits. */
  readyLine?: RegExp;
  /** What stdout must hold at exit, to be sure it did its work. */
  expect?: string;
  /** stdin a pipe closed at once, as a child of tlsd whose peer left has a socket; else /dev/null. */
  closedPipe?: boolean;
}

/** Milliseconds from spawn to exit (or to the ready line), or an error message. */
function timeOnce(run: Run, cwd: string, timeoutMs: number): Promise<number | string> {
  return new Promise((resolve) => {
    const start = performance.now();
    const child = spawn(run.file, run.args, { cwd, env: { ...process.env, ...run.env }, stdio: [run.closedPipe ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    child.stdin?.end();
    let stdout = '';
    let stderr = '';
    let readyAt: number | undefined;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(`timeout after ${timeoutMs} ms`);
    }, timeoutMs);
    child.stdout!.on('data', (data: Buffer) => (stdout += data.toString()));
    child.stderr!.on('data', (data: Buffer) => {
      stderr += data.toString();
      if (readyAt === undefined && run.readyLine?.test(stderr)) {
        readyAt = performance.now() - start;
        child.kill('SIGTERM');
      }
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      resolve(error.message);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const elapsed = performance.now() - start;
      if (run.readyLine) return resolve(readyAt ?? `no ready line: ${stderr.trim().split('\n').pop()}`);
      if (code !== 0) return resolve(`exit ${code}: ${stderr.trim().split('\n').pop()}`);
      if (run.expect !== undefined && stdout !== run.expect) return resolve(`unexpected output ${JSON.stringify(stdout)}`);
      resolve(elapsed);
    });
  });
}

export interface StartupResult {
  name: string;
  command: string;
  medianMs?: number;
  minMs?: number;
  error?: string;
}

export async function measureStartup(repo: string, files: Files, repeats: number): Promise<StartupResult[]> {
  const fingerprint = createHash('sha256').update('bench').digest('hex');
  const aliases = join(files.dir, 'aliases');
  writeFileSync(aliases, `${fingerprint} alice\n`);
  const fifoRoot = join(files.dir, 'fifos');
  mkdirSync(fifoRoot, { recursive: true });
  const node = process.execPath;
  // fp2alias and std2fifo as `npm install -g` puts them on PATH: their shell launchers (bin/NAME).
  const runs: Array<{ name: string; command: string; run: Run }> = [
    { name: 'node -e 0 (floor)', command: 'node -e 0', run: { file: node, args: ['-e', '0'] } },
    {
      name: 'node -e 0, NODE_EXTRA_CA_CERTS unset',
      command: 'env -u NODE_EXTRA_CA_CERTS node -e 0',
      run: { file: node, args: ['-e', '0'], env: { NODE_EXTRA_CA_CERTS: undefined } },
    },
    {
      name: 'tlsd to Listening',
      command: 'node bin/tlsd.js -e -b 127.0.0.1 -k KEY -c CERT -p 0 -- cat',
      run: { file: node, args: ['bin/tlsd.js', '-e', '-b', '127.0.0.1', '-k', files.serverKey, '-c', files.serverCert, '-p', '0', '--', 'cat'], readyLine: /Listening on/ },
    },
    {
      name: 'tlsd-keygen',
      command: 'node bin/tlsd-keygen.js -f -k KEY -c CERT',
      run: { file: node, args: ['bin/tlsd-keygen.js', '-f', '-k', join(files.dir, 'startup-key.pem'), '-c', join(files.dir, 'startup-cert.pem')] },
    },
    {
      name: 'fp2alias',
      command: 'SHA256=<known> bin/fp2alias -f ALIASES',
      run: { file: 'bin/fp2alias', args: ['-f', aliases], env: { SHA256: fingerprint }, expect: 'alice\n' },
    },
    {
      name: 'fp2alias running a command',
      command: 'SHA256=<known> bin/fp2alias -f ALIASES -- true',
      run: { file: 'bin/fp2alias', args: ['-f', aliases, '--', 'true'], env: { SHA256: fingerprint }, expect: '' },
    },
    {
      // What the launcher saves: Node 20 reads NODE_EXTRA_CA_CERTS before the first line of a script.
      name: 'fp2alias without its launcher',
      command: 'SHA256=<known> node dist/fp2alias.cjs -f ALIASES',
      run: { file: node, args: ['dist/fp2alias.cjs', '-f', aliases], env: { SHA256: fingerprint }, expect: 'alice\n' },
    },
    {
      name: 'std2fifo',
      command: 'SHA256=<hex> bin/std2fifo DIR </dev/null',
      run: { file: 'bin/std2fifo', args: [fifoRoot], env: { SHA256: fingerprint } },
    },
    {
      name: 'std2fifo, stdin a pipe',
      command: 'SHA256=<hex> bin/std2fifo DIR, stdin a pipe closed at once',
      run: { file: 'bin/std2fifo', args: [fifoRoot], env: { SHA256: fingerprint }, closedPipe: true },
    },
  ];
  const results: StartupResult[] = [];
  for (const { name, command, run } of runs) {
    const times: number[] = [];
    let error: string | undefined;
    await timeOnce(run, repo, 10_000); // warm the page cache
    for (let i = 0; i < repeats && error === undefined; i++) {
      const outcome = await timeOnce(run, repo, 10_000);
      if (typeof outcome === 'number') times.push(outcome);
      else error = outcome;
    }
    results.push({ name, command, medianMs: times.length ? median(times) : undefined, minMs: times.length ? Math.min(...times) : undefined, error });
  }
  return results;
}
