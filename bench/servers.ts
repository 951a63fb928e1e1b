/**
 * The servers under test, each started on loopback with the same certificates and the same child,
 * in a process group of its own so that it and every child it started can be stopped together.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { groupMembers } from './proc.js';

export interface Files {
  dir: string;
  serverKey: string;
  serverCert: string;
  clientKey: string;
  clientCert: string;
  /** The download file (`cat FILE`). */
  data: string;
}

/** What the child is: `cat` echoing, or `cat FILE` sending a file. */
export type Child = 'echo' | 'download';

export interface ServerSpec {
  name: string;
  /** Mutual TLS (false: plain TCP, the floor). */
  tls: boolean;
  /** Whether it requires and verifies a client certificate. */
  clientCert: boolean;
  /** Forks a process per connection that does the connection's work (not counted as the daemon's). */
  forks: boolean;
  /** The command line, for the table's notes and docs/performance.md. */
  command(port: number, child: Child, files: Files, profileDir?: string): { file: string; args: string[] };
  /** Debian package that provides it, if any. */
  pkg?: string;
  binary: string;
  note?: string;
  /** A line on stderr that says it is ready to serve (else: the port accepts a connection). */
  ready?: RegExp;
  /** Processes that serve connections (tlsd's `--workers`), for the descriptor budget. */
  workers?: number;
}

export const maxPeers = 20_000;

function catArgs(child: Child, files: Files): string[] {
  return child === 'echo' ? ['cat'] : ['cat', files.data];
}

/**
 * tlsd as one process (`tlsd`), or as a primary handing connections to `--workers N` worker
 * processes (`tlsd-wN`), with otherwise the same command line.
 */
function tlsdSpec(workers: number): ServerSpec {
  return {
    name: workers === 1 ? 'tlsd' : `tlsd-w${workers}`,
    tls: true,
    clientCert: true,
    forks: false,
    binary: process.execPath,
    workers,
    // The primary logs `Started worker N, pid P` for each worker after its `Listening on` lines.
    ready: workers === 1 ? /Listening on .*port \d+/ : new RegExp(`Started worker ${workers}, pid \\d+`),
    note: workers === 1 ? undefined : `tlsd --workers ${workers}: a primary that accepts and hands each connection to one of ${workers} worker processes, each with its own spawn helper; CPU and RSS summed over them all`,
    command: (port, child, files, profileDir) => ({
      file: process.execPath,
      args: [
        ...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []),
        'bin/tlsd.js', '-e', '-b', '127.0.0.1', '-k', files.serverKey, '-c', files.serverCert, '-p', String(port),
        '--max-peers', String(maxPeers), ...(workers === 1 ? [] : ['--workers', String(workers)]), '--', ...catArgs(child, files),
      ],
    }),
  };
}

export const servers: ServerSpec[] = [
  tlsdSpec(1),
  tlsdSpec(2),
  {
    name: 'stunnel',
    tls: true,
    clientCert: true,
    forks: false,
    pkg: 'stunnel4',
    binary: 'stunnel',
    note: 'threads in one process; `exec` children excluded',
    command: (port, child, files) => {
      const conf = join(files.dir, `stunnel-${port}.conf`);
      writeFileSync(
        conf,
        [
          'foreground = yes',
          'pid =',
          'syslog = no',
          'debug = 3',
          '[bench]',
          `accept = 127.0.0.1:${port}`,
          `cert = ${files.serverCert}`,
          `key = ${files.serverKey}`,
          `CAfile = ${files.clientCert}`,
          'requireCert = yes',
          'verifyPeer = yes',
          'exec = /bin/cat',
          `execArgs = ${catArgs(child, files).join(' ')}`,
          '',
        ].join('\n'),
      );
      return { file: 'stunnel', args: [conf] };
    },
  },
  {
    name: 'socat',
    tls: true,
    clientCert: true,
    forks: true,
    pkg: 'socat',
    binary: 'socat',
    note: 'fork per connection: TLS work is in the children, excluded',
    command: (port, child, files) => ({
      file: 'socat',
      args: [
        `OPENSSL-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,cert=${files.serverCert},key=${files.serverKey},cafile=${files.clientCert},verify=1`,
        `EXEC:${catArgs(child, files).join(' ')}`,
      ],
    }),
  },
  {
    name: 'ncat',
    tls: true,
    clientCert: false,
    forks: true,
    pkg: 'ncat',
    binary: 'ncat',
    note: 'cannot require a client certificate; fork per connection for --exec, children excluded',
    command: (port, child, files) => ({
      file: 'ncat',
      args: ['--ssl', '--ssl-cert', files.serverCert, '--ssl-key', files.serverKey, '-lk', '-m', String(maxPeers), '127.0.0.1', String(port), '--exec', `/bin/${catArgs(child, files).join(' ')}`],
    }),
  },
  ...(['spawn', 'echo'] as const).map(
    (mode): ServerSpec => ({
      name: `node-${mode}`,
      tls: true,
      clientCert: true,
      forks: false,
      binary: process.execPath,
      note:
        mode === 'spawn'
          ? "a bare Node TLS server (bench/node-tls-server.ts) that starts each child with child_process.spawn; children excluded"
          : "a bare Node TLS server with no child at all: it echoes (or sends the file) itself; Node's own TLS floor",
      command: (port, child, files) => ({
        file: process.execPath,
        args: ['bench/out/node-tls-server.js', mode, String(port), files.serverKey, files.serverCert, ...(child === 'download' ? [files.data] : [])],
      }),
    }),
  ),
  {
    name: 'socat-tcp',
    tls: false,
    clientCert: false,
    forks: true,
    pkg: 'socat',
    binary: 'socat',
    note: 'plain TCP, the floor; fork per connection, children excluded',
    command: (port, child, files) => ({
      file: 'socat',
      args: [`TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, `EXEC:${catArgs(child, files).join(' ')}`],
    }),
  },
];

/** A free loopback port (bound and released; the server binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** A running server: its pid (also its process group) and the last lines it wrote to stderr. */
export class RunningServer {
  private readonly tail: string[] = [];
  private exited = false;

  private constructor(
    readonly spec: ServerSpec,
    readonly port: number,
    private readonly process: ChildProcess,
  ) {
    let partial = '';
    process.stderr!.setEncoding('utf8');
    process.stderr!.on('data', (text: string) => {
      const lines = (partial + text).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        this.tail.push(line);
        if (this.tail.length > 40) this.tail.shift();
        this.emitLine?.(line);
      }
    });
    process.on('exit', () => (this.exited = true));
  }

  private emitLine?: (line: string) => void;

  get pid(): number {
    return this.process.pid!;
  }

  get alive(): boolean {
    return !this.exited;
  }

  lastLines(): string {
    return this.tail.slice(-8).join('\n');
  }

  static async start(spec: ServerSpec, child: Child, files: Files, cwd: string, profileDir?: string): Promise<RunningServer> {
    const port = await freePort();
    const { file, args } = spec.command(port, child, files, profileDir);
    // stdin stays open (tlsd reads `host port` lines from it); stdout is not used by any of them.
    const process = spawn(file, args, { cwd, detached: true, stdio: ['pipe', 'ignore', 'pipe'] });
    const server = new RunningServer(spec, port, process);
    const ready = spec.ready ? server.waitForLine(spec.ready, 10_000) : server.waitForPort(10_000);
    if (!(await ready)) {
      await server.stop();
      throw new Error(`${spec.name} did not start: ${server.lastLines() || 'no output'}`);
    }
    return server;
  }

  private waitForLine(pattern: RegExp, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.process.once('exit', () => resolve(false));
      this.emitLine = (line) => {
        if (!pattern.test(line)) return;
        clearTimeout(timer);
        this.emitLine = undefined;
        resolve(true);
      };
    });
  }

  private async waitForPort(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && !this.exited) {
      if (await canConnect(this.port)) {
        await sleep(100); // let a forking server reap the child that probe made
        return true;
      }
      await sleep(50);
    }
    return false;
  }

  /**
   * SIGTERM to the group (tlsd exits gracefully, writing its CPU profile if asked), then SIGKILL to
   * whatever is left of it; waits, bounded, until the group is empty.
   */
  async stop(graceMs = 5_000): Promise<void> {
    const pgid = this.pid;
    const signal = (name: NodeJS.Signals): void => {
      try {
        process.kill(-pgid, name);
      } catch {
        // already gone
      }
    };
    signal('SIGTERM');
    this.process.stdin?.destroy();
    const deadline = Date.now() + graceMs;
    while (!this.exited && Date.now() < deadline) await sleep(50);
    signal('SIGKILL');
    const killDeadline = Date.now() + 20_000;
    while (groupMembers(pgid).length > 0 && Date.now() < killDeadline) {
      signal('SIGKILL');
      await sleep(100);
    }
  }
}
