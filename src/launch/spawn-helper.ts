import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import { constants } from 'node:os';
import type { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { errnoName } from '../os/errno.js';
import { describeExit, signalName, signalNumber } from '../os/signal-names.js';
import type { ChildEvents, ChildLike, Environment, Launch, LaunchRequest } from './launch.js';
import { nodeLaunch } from './node-spawn.js';
import { RemoteChild, type RemoteChildOwner } from './remote-child.js';
import { builtSpawnHelper } from '../package-files.js';

/** The helper's arguments: the protocol below. A helper built for another one refuses to start. */
export const SPAWN_HELPER_ARGUMENTS = ['--protocol', '2'] as const;
/**
 * The arguments to start the helper with: the protocol first (what the ready report must repeat),
 * then the signal its children get if tlsd disappears (a worker killed, say) while they run.
 */
export function spawnHelperArguments(endSignal: NodeJS.Signals | undefined): string[] {
  return endSignal ? [...SPAWN_HELPER_ARGUMENTS, '--end-signal', String(signalNumber(endSignal))] : [...SPAWN_HELPER_ARGUMENTS];
}

/** The helper says it is ready (with a descriptor, to show descriptors pass) within this long. */
const READY_TIMEOUT_MS = 5_000;

export interface SpawnHelperOptions {
  /** The helper program (src/launch/spawn-helper.c). */
  program: string;
  /** The helper's own environment, which each child gets with its connection's variables added. */
  base: Environment;
  /** For Node's spawn, once the helper cannot be used: see nodeLaunch. */
  coverFds: readonly number[];
  log: Logger;
  /** Sent by the helper to each child still running if tlsd is gone (tlsd's -s); none if unset. */
  endSignal?: NodeJS.Signals;
}

/** What the helper reports over the IPC channel (src/launch/spawn-helper.c has the protocol). */
type Report =
  | { ready: number }
  | { stdin: number }
  | { stdout: number }
  | { started: number; pid: number }
  | { failed: number; errno: number }
  | { exited: number; status?: number; signal?: number };

/**
 * Starts children through the spawn helper (src/launch/spawn-helper.c). Node starts a child by
 * forking the whole daemon, which costs milliseconds of the event loop per connection and grows
 * with the heap; the helper starts each with vfork and exec, a fraction of that, on the other core.
 *
 * Who can reach a child's stdio: tlsd and the child alone. There is no rendezvous to squat or
 * connect to: the helper's stdin (requests) and Node's IPC channel (reports) are descriptors tlsd
 * makes and passes at exec, and each child's stdin and stdout are socket pairs the helper makes,
 * whose other ends come back to tlsd over the channel as descriptors. tlsd starts the helper once
 * it has dropped its privileges; if the helper dies, the next child starts a new one.
 */
export class SpawnHelper {
  private helper: ChildProcess | undefined;
  private starting: Promise<void> | undefined;
  private readonly children = new Map<number, RemoteChild>();
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
    const child = new RemoteChild(this.nextId++, request.command, this.owner, events);
    this.children.set(child.id, child);
    this.holdWhileChildren();
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
    const header = Buffer.from(`S ${child.id} ${argv.length} ${environment.length} ${body.length}\n`);
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
      this.children.delete(child.id);
      this.holdWhileChildren();
    },
  };

  /** Starts the helper; resolves once it has said it is ready with a descriptor, reports wired to report(). */
  private async start(): Promise<void> {
    // Node's IPC channel is the helper's only way back: 'ipc' makes it a socket pair that passes
    // descriptors. The helper's stdout is not used; its stderr is tlsd's, as its children's.
    const helper = spawn(this.options.program, spawnHelperArguments(this.options.endSignal), { stdio: ['pipe', 'ignore', 'inherit', 'ipc'], env: this.options.base, serialization: 'json' });
    // Its exit is what counts (helperGone); a failed start is reported by the listener below.
    helper.on('error', () => {});
    helper.stdin?.on('error', () => {});
    try {
      await new Promise<void>((resolve, reject) => {
        const early = (code: number | null, signal: NodeJS.Signals | null): void => reject(new Error(`it ${describeExit(code, signal)} before it was ready`));
        const timer = setTimeout(() => reject(new Error(`it did not pass a descriptor within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
        const settle = (): void => {
          clearTimeout(timer);
          helper.off('error', reject);
          helper.off('exit', early);
          helper.off('message', first);
        };
        const first = (message: unknown, handle: unknown): void => {
          settle();
          closeHandle(handle);
          if (isReport(message) && 'ready' in message && message.ready === Number(SPAWN_HELPER_ARGUMENTS[1]) && isSocket(handle)) {
            helper.on('message', (report: unknown, passed: unknown) => this.report(report, passed));
            resolve();
          } else reject(new Error(`it said ${JSON.stringify(message)}${isSocket(handle) ? '' : ' without a descriptor'} instead of being ready`));
        };
        helper.once('error', (error) => {
          settle();
          reject(error);
        });
        helper.once('exit', early);
        helper.on('message', first);
      });
    } catch (error) {
      // Nothing of a failed start stays behind: tlsd goes on with Node's spawn.
      helper.kill('SIGKILL');
      if (helper.connected) helper.disconnect();
      throw error;
    }
    this.helper = helper;
    // What it reported before it died is still on the channel: read to its end first, so that a
    // child it started is not taken for one that failed to.
    helper.once('exit', (code, signal) => {
      if (helper.connected) helper.once('disconnect', () => this.helperGone(helper, code, signal));
      else this.helperGone(helper, code, signal);
    });
    (helper.stdin as unknown as Socket | null)?.unref();
    this.holdWhileChildren();
  }

  /**
   * An idle helper does not keep tlsd running; a child whose exit it has yet to report does. At
   * shutdown that report can be all that is left (listener closed, peer gone, the child's stdio
   * closed): unreferenced, tlsd would end there, its exit and `Shutting down` never logged.
   */
  private holdWhileChildren(): void {
    const helper = this.helper;
    if (!helper) return;
    if (this.children.size > 0) {
      helper.ref();
      helper.channel?.ref();
    } else {
      helper.unref();
      helper.channel?.unref();
    }
  }

  private report(message: unknown, handle: unknown): void {
    if (!isReport(message)) {
      closeHandle(handle);
      return;
    }
    if ('stdin' in message || 'stdout' in message) {
      const which = 'stdin' in message ? 'stdin' : 'stdout';
      const id = 'stdin' in message ? message.stdin : message.stdout;
      const child = this.children.get(id);
      if (child && isSocket(handle)) child.attach(which, handle);
      else closeHandle(handle);
      return;
    }
    closeHandle(handle);
    if ('started' in message) this.children.get(message.started)?.started(message.pid);
    else if ('failed' in message) {
      const child = this.children.get(message.failed);
      // As Node words it: "spawn nosuch ENOENT".
      const code = errnoName(message.errno) ?? `errno ${message.errno}`;
      child?.fail(Object.assign(new Error(`spawn ${child.command} ${code}`), { code }));
    } else if ('exited' in message) {
      const signal = message.signal === undefined ? null : (signalName(message.signal) ?? null);
      this.children.get(message.exited)?.exited(message.status ?? null, signal);
    }
  }

  private helperGone(helper: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.helper !== helper) return;
    this.helper = undefined;
    this.starting = undefined;
    // Its children run on, out of tlsd's reach: their pids may be reused once they exit, so tlsd
    // sends them nothing (no -s, no shutdown signal); their sessions end with their stdio.
    const lost = this.children.size > 0 ? `; the exit status of ${this.children.size} children is lost, and they get no signal from tlsd` : '';
    this.options.log.error(`spawn helper ${describeExit(code, signal)}${lost}; the next child starts a new one`);
    for (const child of this.children.values()) {
      child.fail(new Error('the spawn helper exited'));
      child.exited(null, null);
    }
  }
}

/**
 * The spawn helper to start children with, or undefined for Node's own spawn: `TLSD_SPAWNER=node`,
 * or off Linux (the helper uses Linux's signalfd and close_range). `TLSD_SPAWNER=PATH` names
 * another build of the helper; by default it is the one built with tlsd.
 */
export function chooseSpawner(env: NodeJS.ProcessEnv): string | undefined {
  if (env.TLSD_SPAWNER === 'node' || process.platform !== 'linux') return undefined;
  return env.TLSD_SPAWNER || builtSpawnHelper;
}

const REPORT_KEYS = new Set(['ready', 'stdin', 'stdout', 'started', 'failed', 'exited']);

/** A message of the helper's: an object whose first key names the report and whose values are integers. */
function isReport(message: unknown): message is Report {
  if (typeof message !== 'object' || message === null) return false;
  const entries = Object.entries(message);
  return entries.length > 0 && REPORT_KEYS.has(entries[0]![0]) && entries.every(([, value]) => Number.isSafeInteger(value));
}

function isSocket(handle: unknown): handle is Socket {
  return typeof handle === 'object' && handle !== null && typeof (handle as Socket).destroy === 'function' && typeof (handle as Socket).write === 'function';
}

/** A descriptor that came with a message it does not belong to is closed, never kept. */
function closeHandle(handle: unknown): void {
  if (isSocket(handle)) handle.destroy();
  else if (typeof handle === 'object' && handle !== null && typeof (handle as { close?: unknown }).close === 'function') (handle as { close(): void }).close();
}
