/** What the runner prepares: the peers' packages, certificates, the download file, machine facts. */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, writeSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type { Files, ServerSpec } from './servers.js';

function found(binary: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${binary}`], { stdio: 'ignore' }).status === 0;
}

/**
 * Installs the Debian packages of the servers that are missing, when run as root with apt-get;
 * returns the servers that can run.
 */
export function ensureServers(specs: ServerSpec[], log: (line: string) => void): ServerSpec[] {
  const missing = [...new Set(specs.filter((spec) => !found(spec.binary) && spec.pkg).map((spec) => spec.pkg!))];
  if (missing.length > 0) {
    if (process.getuid?.() === 0 && found('apt-get')) {
      log(`installing ${missing.join(' ')} with apt-get`);
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
      let install = spawnSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'inherit', env, timeout: 300_000 });
      if (install.status !== 0) {
        spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env, timeout: 300_000 });
        install = spawnSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'inherit', env, timeout: 300_000 });
      }
    } else log(`missing ${missing.join(' ')} (not root, or no apt-get): those servers are skipped`);
  }
  return specs.filter((spec) => found(spec.binary));
}

/** EC P-256 identities for the servers and the client, made with tlsd-keygen, and the download file. */
export function prepareFiles(repo: string, dataBytes: number): Files & { dataHash: string } {
  const dir = mkdtempSync(join(os.tmpdir(), 'tlsd-bench-'));
  const files = {
    dir,
    serverKey: join(dir, 'server-key.pem'),
    serverCert: join(dir, 'server-cert.pem'),
    clientKey: join(dir, 'client-key.pem'),
    clientCert: join(dir, 'client-cert.pem'),
    data: join(dir, 'data.bin'),
  };
  for (const [key, cert, subject] of [
    [files.serverKey, files.serverCert, 'bench-server'],
    [files.clientKey, files.clientCert, 'bench-client'],
  ] as const) {
    execFileSync(process.execPath, ['bin/tlsd-keygen.js', '-t', 'ec', '-s', subject, '-k', key, '-c', cert], { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const hash = createHash('sha256');
  const fd = openSync(files.data, 'w');
  const block = randomBytes(1024 * 1024);
  for (let written = 0; written < dataBytes; written += block.length) {
    const part = block.subarray(0, Math.min(block.length, dataBytes - written));
    block[0] = (block[0]! + 1) & 0xff; // no two MiB alike
    writeSync(fd, part);
    hash.update(part);
  }
  closeSync(fd);
  return { ...files, dataHash: hash.digest('hex') };
}

function firstLine(file: string, args: string[]): string {
  try {
    const run = spawnSync(file, args, { encoding: 'utf8', timeout: 5_000 });
    return `${run.stdout}${run.stderr}`.split('\n').find((line) => line.trim() !== '')?.trim() ?? 'unknown';
  } catch {
    return 'not found';
  }
}

export interface Machine {
  date: string;
  cpus: number;
  cpuModel: string;
  memory: string;
  kernel: string;
  node: string;
  nodeOpenssl: string;
  systemOpenssl: string;
  versions: Record<string, string>;
  /** Load average when the run started: other work on the machine skews every figure. */
  loadBefore: string;
}

export function describeMachine(): Machine {
  return {
    date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
    cpus: os.availableParallelism?.() ?? os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    nodeOpenssl: process.versions.openssl ?? 'unknown',
    loadBefore: os.loadavg().map((n) => n.toFixed(2)).join(', '),
    systemOpenssl: firstLine('openssl', ['version']),
    versions: {
      stunnel: firstLine('sh', ['-c', 'stunnel -version 2>&1 | grep "^stunnel"']).replace(/ on .*/, ''),
      socat: firstLine('sh', ['-c', 'socat -V | grep "socat version"']).replace(/ on .*/, ''),
      ncat: firstLine('ncat', ['--version']).replace(/ \(.*/, ''),
    },
  };
}
