import { fork, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import type { Identity } from '../core/identity.js';
import type { FromWorker, ToWorker, WorkerConfig } from './messages.js';
import { WORKER_MARK } from './worker.js';

/**
 * A worker's young generation stays at 1 MiB: V8 grows it to 16 MiB in a burst of connections and
 * keeps it, which with thousands of idle peers is about 2 KiB per peer (docs/performance.md,
 * "Where an idle peer's memory goes"); the bench saw no CPU cost per connection from it.
 */
const WORKER_V8_FLAGS = ['--max-semi-space-size=1'];

/** A worker should say it is ready within this long (its spawn helper allows itself 5 s). */
const READY_TIMEOUT_MS = 10_000;

/** A connection or dial line as the primary follows it in a worker, until both are done. */
export interface Handed {
  /**
   * The primary's socket object for the connection handed over (its descriptor went to the
   * worker): what its handshake slot and --max-per-ip count are held by. Destroyed once closed.
   */
  standIn?: Socket;
  /** Holds a peer slot. */
  slot: boolean;
  /** Nothing more will be heard of its closing: the worker said so, or will not say (a dial line, a connection nothing counts once its handshake is over). */
  closed: boolean;
}

export interface WorkerEvents {
  message(worker: WorkerProcess, message: FromWorker): void;
  /** It exited or was killed: whatever it held is the primary's to free. */
  gone(worker: WorkerProcess, code: number | null, signal: NodeJS.Signals | null): void;
}

/** One worker process, as the primary sees it: what it was given, and how to reach it. */
export class WorkerProcess {
  readonly connections = new Map<number, Handed>();
  /** Peers it serves, as it last said. */
  peers = 0;
  readonly startedAt = Date.now();
  /** 1..n, kept by its replacement. */
  readonly index: number;
  private readonly child: ChildProcess;
  private alive = true;
  private readyNow = false;

  /**
   * Forks `program` (the tlsd the user ran) as worker `config.index`: the same user (the primary
   * has dropped its privileges already), its environment with the worker mark, stdin and stdout
   * not shared, stderr tlsd's, and the IPC channel, a socket pair only the two of them hold.
   */
  constructor(
    program: string,
    config: WorkerConfig,
    /** The identity it was given (config.credentials), so that a reload it missed can be made up. */
    readonly identity: Identity,
    events: WorkerEvents,
  ) {
    this.index = config.index;
    this.child = fork(program, [], { execArgv: [...process.execArgv, ...WORKER_V8_FLAGS], env: { ...config.environment, [WORKER_MARK]: '1' }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'], serialization: 'json' });
    this.child.on('error', () => {}); // its exit says what happened
    this.child.on('message', (batch: FromWorker[]) => {
      if (!Array.isArray(batch)) return; // not a worker of this tlsd
      for (const message of batch) {
        if (message.t === 'ready') this.readyNow = true;
        events.message(this, message);
      }
    });
    this.child.once('exit', (code, signal) => {
      this.alive = false;
      events.gone(this, code, signal);
    });
    this.send({ t: 'config', config });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.alive;
  }

  get ready(): boolean {
    return this.alive && this.readyNow;
  }

  /** Resolves once it said it is ready; rejects with why not (it died, or took too long). */
  whenReady(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.readyNow) return resolve();
      const timer = setTimeout(() => reject(new Error(`Cannot start worker ${this.index}: it did not say it was ready within ${READY_TIMEOUT_MS / 1000} s`)), READY_TIMEOUT_MS);
      const onMessage = (batch: FromWorker[]): void => {
        if (!batch.some((message) => message.t === 'ready')) return;
        settle();
        resolve();
      };
      const onExit = (): void => {
        settle();
        reject(new Error(`Cannot start worker ${this.index}: it ended before it was ready`));
      };
      const settle = (): void => {
        clearTimeout(timer);
        this.child.off('message', onMessage);
        this.child.off('exit', onExit);
      };
      this.child.on('message', onMessage);
      this.child.once('exit', onExit);
    });
  }

  /** Sends, with a connection's descriptor when given; nothing once it is gone. */
  send(message: ToWorker, socket?: Socket): void {
    if (!this.alive || !this.child.connected) return;
    if (socket) this.child.send(message, socket);
    else this.child.send(message);
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}
