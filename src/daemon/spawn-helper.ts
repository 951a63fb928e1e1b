import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { constants } from 'node:os';
import { createInterface } from 'node:readline';
import type { Logger } from '../logger.js';
import { reason } from '../reason.js';
import { errnoName } from '../os/errno.js';
import type { Environment } from './child-env.js';
import { nodeLaunch, type ChildEvents, type ChildLike, type Launch, type LaunchRequest } from './child-like.js';
import { RemoteChild, type RemoteChildOwner } from './remote-child.js';
import { builtSpawnHelper } from '../native-programs.js';

const ADDRESS_PREFIX = 'tlsd-spawn-';
/** The helper's one argument: the name of tlsd's socket, `tlsd-spawn-PID-RANDOM`. */
const ADDRESS_PATTERN = new RegExp(`^${ADDRESS_PREFIX}\\d+-[0-9a-f]+$`);
const HEADER_BYTES = 34; // 32 hex digits of token, `i` or `o`, newline
const HEADER_TIMEOUT_MS = 5_000;
const signalNames = new Map<number, NodeJS.Signals>(Object.entries(constants.signals).map(([name, value]) => [value, name as NodeJS.Signals]));

export interface SpawnHelperOptions {
  /** The helper program (src/native/spawn-helper.c). */
  program: string;
  /** The helper's own environment, which each child gets with its connection's variables added. */
  base: Environment;
  /** What the helper (and so every child) gets at descriptors 3, 4, …; see nodeLaunch. */
  coverFds: readonly number[];
  log: Logger;
}

/**
 * Starts children through the spawn helper (src/native/spawn-helper.c; the protocol is described
 * there). Node starts a child by forking the whole daemon, which costs milliseconds of the event
 * loop per connection and grows with the heap; the helper starts each with vfork and exec, a
 * fraction of that, on the other core. The helper and the Unix
 * socket its children's stdio connects to are made by ready(), which tlsd calls once it has
 * dropped its privileges; if the helper dies, the next child starts a new one.
 */
export class SpawnHelper {
  private helper: ChildProcess | undefined;
  private server: Server | undefined;
  private starting: Promise<void> | undefined;
  private readonly byId = new Map<number, RemoteChild>();
  private readonly byToken = new Map<string, RemoteChild>();
  private nextId = 1;
  /** Node's spawn, once the helper could not be started. */
  private fallback: Launch | undefined;

  constructor(private readonly options: SpawnHelperOptions) {}

  /**
   * Starts the helper now (tlsd calls it once it has dropped its privileges, before serving);
   * resolves when it is ready, or when tlsd has fallen back to Node's spawn.
   */
  async ready(): Promise<void> {
    await this.begin().catch(() => {});
  }

  launch = (request: LaunchRequest, events: ChildEvents): ChildLike => {
    if (this.fallback) return this.fallback(request, events);
    const child = new RemoteChild(this.nextId++, randomBytes(16).toString('hex'), request.command, this.owner, events);
    this.byId.set(child.id, child);
    this.byToken.set(child.token, child);
    this.begin().then(
      () => this.request(child, request),
      (error: unknown) => child.fail(error instanceof Error ? error : new Error(String(error))),
    );
    return child;
  };

  private begin(): Promise<void> {
    this.starting ??= this.start().catch((error: unknown) => {
      this.options.log.error(`Cannot start the spawn helper (${this.options.program}): ${reason(error)}; children start with Node's spawn`);
      this.fallback = nodeLaunch(this.options.base, this.options.coverFds);
      throw error;
    });
    return this.starting;
  }

  private request(child: RemoteChild, { command, args, env }: LaunchRequest): void {
    const argv = [command, ...args];
    const environment = Object.entries(env).map(([name, value]) => `${name}=${value}`);
    const fields = [...argv, ...environment];
    if (fields.some((field) => field.includes('\0'))) {
      child.fail(Object.assign(new Error(`spawn ${command} EINVAL`), { code: 'EINVAL' }));
      return;
    }
    const stdin = this.helper?.stdin;
    if (!stdin || stdin.destroyed) {
      child.fail(new Error('the spawn helper is not running'));
      return;
    }
    const body = Buffer.from(fields.map((field) => `${field}\0`).join(''));
    const header = Buffer.from(`S ${child.id} ${child.token} ${argv.length} ${environment.length} ${body.length}\n`);
    stdin.write(Buffer.concat([header, body]));
  }

  /**
   * One object all children share: a closure made per child in launch() would keep its request
   * (the environment too) for the child's whole life.
   */
  private readonly owner: RemoteChildOwner = {
    kill: (child, signal) => {
      this.helper?.stdin?.write(`K ${child.id} ${constants.signals[signal]}\n`);
    },
    forget: (child) => {
      this.byId.delete(child.id);
      this.byToken.delete(child.token);
    },
  };

  private async start(): Promise<void> {
    const address = `${ADDRESS_PREFIX}${process.pid}-${randomBytes(8).toString('hex')}`;
    const server = createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(`\0${address}`, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (error) => this.options.log.error(`spawn helper socket: ${reason(error)}`));
    server.unref();
    let helper: ChildProcess;
    try {
      helper = await this.runHelper(address);
    } catch (error) {
      // Nothing of a failed start stays behind: tlsd goes on with Node's spawn.
      server.close();
      throw error;
    }
    this.server = server;
    this.helper = helper;
    helper.unref();
    for (const stream of [helper.stdin, helper.stdout]) (stream as unknown as Socket | null)?.unref();
    helper.once('exit', (code, signal) => this.helperGone(helper, code, signal));
  }

  /** Starts the helper; resolves once it says it is ready, its reports wired to report(). */
  private async runHelper(address: string): Promise<ChildProcess> {
    const helper = spawn(this.options.program, [address], { stdio: ['pipe', 'pipe', 'inherit', ...this.options.coverFds], env: this.options.base });
    await new Promise<void>((resolve, reject) => {
      helper.once('error', reject);
      helper.once('spawn', () => {
        helper.off('error', reject);
        resolve();
      });
    });
    helper.stdin?.on('error', () => {}); // its exit is what counts, see start() and helperGone()
    const lines = createInterface({ input: helper.stdout! });
    const ready = new Promise<void>((resolve, reject) => {
      const early = (code: number | null, signal: NodeJS.Signals | null): void => reject(new Error(`it ${signal ? `was killed by signal ${signal}` : `exited with status ${code}`} before it was ready`));
      helper.once('exit', early);
      lines.once('line', (line) => {
        helper.off('exit', early);
        if (line === 'R') resolve();
        else reject(new Error(`it said ${JSON.stringify(line)} instead of being ready`));
      });
    });
    try {
      await ready;
    } catch (error) {
      helper.kill('SIGKILL');
      throw error;
    }
    lines.on('line', (line) => this.report(line));
    return helper;
  }

  private report(line: string): void {
    const [kind, id, first, second] = line.split(' ');
    const child = this.byId.get(Number(id));
    if (!child) return;
    if (kind === 'P') child.started(Number(first));
    else if (kind === 'E') {
      // As Node words it: "spawn nosuch ENOENT".
      const code = errnoName(Number(first)) ?? `errno ${first}`;
      child.fail(Object.assign(new Error(`spawn ${child.command} ${code}`), { code }));
    } else if (kind === 'X') {
      child.exited(first === '-' ? null : Number(first), second === '-' ? null : (signalNames.get(Number(second)) ?? null));
    }
  }

  private accept(socket: Socket): void {
    // Not a closure here: one would share this scope and keep the header and timer for the
    // connection's whole life.
    socket.on('error', destroySelf);
    const timer = setTimeout(() => socket.destroy(), HEADER_TIMEOUT_MS);
    let header = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      header = Buffer.concat([header, chunk]);
      if (header.length < HEADER_BYTES) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      const rest = header.subarray(HEADER_BYTES);
      if (rest.length > 0) socket.unshift(rest);
      const text = header.subarray(0, HEADER_BYTES).toString('latin1');
      const child = this.byToken.get(text.slice(0, 32));
      const which = text[32];
      if (!child || text[33] !== '\n' || (which !== 'i' && which !== 'o')) socket.destroy();
      else child.attach(which, socket);
    };
    socket.on('data', onData);
  }

  private helperGone(helper: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.helper !== helper) return;
    this.helper = undefined;
    this.starting = undefined;
    this.server?.close();
    this.server = undefined;
    if (this.byId.size > 0) this.options.log.error(`spawn helper ${signal ? `killed by signal ${signal}` : `exited with status ${code}`}; the exit status of ${this.byId.size} children is lost`);
    for (const child of this.byId.values()) {
      child.fail(new Error('the spawn helper exited'));
      child.exited(null, null);
    }
  }
}

/**
 * The spawn helper to start children with, or undefined for Node's own spawn: `TLSD_SPAWNER=node`,
 * or off Linux (the helper's socket lives in Linux's abstract namespace). `TLSD_SPAWNER=PATH` names
 * another build of the helper; by default it is the one built with tlsd.
 */
export function chooseSpawner(env: NodeJS.ProcessEnv): string | undefined {
  if (env.TLSD_SPAWNER === 'node' || process.platform !== 'linux') return undefined;
  return env.TLSD_SPAWNER || builtSpawnHelper;
}

/** Whether a command line (from /proc/PID/cmdline) is a spawn helper's: for the tests (bench/proc.ts, compiled on its own, keeps a copy). */
export function isSpawnHelperCommandLine(argv: readonly string[]): boolean {
  return ADDRESS_PATTERN.test(argv[1] ?? '');
}

/** An 'error' listener that closes the socket it is on. */
function destroySelf(this: Socket): void {
  this.destroy();
}
