import type { AddressInfo, Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import type { Readable } from 'node:stream';
import { describeExit } from '../os/signal-names.js';
import { reason } from '../log/reason.js';
import type { ProxiedEndpoints } from '../input/proxy-header.js';
import { announceListening, listenerSettings, logStartup, openAliases, refusal, reloadIdentity, statusHeader, stopTakingPeers, type DaemonOptions, type Service } from '../core/daemon.js';
import { readDialLines } from '../core/dial-lines.js';
import { loadIdentity, type Identity } from '../core/identity.js';
import { formatAddress, Listener } from '../core/listener.js';
import { PeerSlots } from '../core/peer-slots.js';
import type { Credentials, FromWorker, WorkerConfig } from './messages.js';
import { WorkerProcess, type Handed } from './worker-process.js';

export interface WorkersOptions {
  /** How many worker processes. */
  count: number;
  /** The program a worker runs: the tlsd the user started (it becomes a worker by WORKER_MARK). */
  program: string;
  /** How workers log: as the primary does, each line after `worker N: `. */
  log: WorkerConfig['log'];
}

/** Replies to a status request or a reload are awaited this long: a stuck worker delays nobody for longer. */
const REPLY_TIMEOUT_MS = 2_000;
/** A worker that dies this soon after it started is started again only after RESTART_DELAY_MS: no busy loop. */
const QUICK_DEATH_MS = 1_000;
const RESTART_DELAY_MS = 1_000;

type Waiter = (worker: WorkerProcess, message: FromWorker | undefined) => void;

/**
 * tlsd with worker processes: the primary accepts every connection and holds every limit (peer
 * slots, handshake slots, --max-per-ip), reads PROXY headers and `host port` lines, and hands each
 * connection's descriptor to the worker with the fewest; workers do the TLS and the sessions
 * (workers/worker.ts). To a user it is one daemon: one set of limits, one reload, one status table,
 * one shutdown, whatever the number of workers.
 */
export class Primary implements Service {
  private readonly workers: WorkerProcess[] = [];
  private readonly slots: PeerSlots;
  private readonly listener: Listener;
  private readonly waiters = new Set<Waiter>();
  /** Connections admitted while no worker was up, until one is. */
  private readonly waiting = new Map<Socket, { remote: string; proxied?: ProxiedEndpoints; timer: NodeJS.Timeout }>();
  private nextId = 1;
  private nextRequest = 1;
  private lastPick = 0;
  private stopping = false;
  private reloading: Promise<void> = Promise.resolve();
  private drained: Promise<void> | undefined;
  private allGone: (() => void) | undefined;

  private constructor(
    private readonly options: DaemonOptions,
    private readonly settings: WorkersOptions,
    private identity: Identity,
  ) {
    this.slots = new PeerSlots(options.maxPeers);
    this.listener = new Listener({
      ...listenerSettings(options, identity),
      refuse: () => this.refusal(),
      onSecure: () => {}, // handshakes are the workers'
      handOff: (socket, remote, proxied) => this.handOff(socket, remote, proxied),
    });
  }

  /** Loads the identity, listens, drops privileges, and starts the workers; rejects with a one-line reason. */
  static async start(options: DaemonOptions, settings: WorkersOptions): Promise<Primary> {
    // The primary's young generation stays as it starts (1 MiB): a burst of accepts would grow it
    // to 16 MiB, which it keeps, 3 KiB per peer at 10,000 (what it allocates per connection dies
    // young). Read by V8 each time it would grow the space, so it takes effect at run time.
    setFlagsFromString('--semi-space-growth-factor=1');
    const identity = await loadIdentity(options);
    // Read here to fail at start as a single tlsd does; each worker reads its own copy.
    const aliases = openAliases(options);
    aliases?.close();
    const primary = new Primary(options, settings, identity);
    const addresses: AddressInfo[] = await primary.listener.listen();
    // Workers are forked after this, so they run as the user tlsd becomes.
    options.beforeServing?.();
    for (let index = 1; index <= settings.count; index++) primary.workers.push(primary.fork(index));
    try {
      await Promise.all(primary.workers.map((worker) => worker.whenReady()));
    } catch (error) {
      for (const worker of primary.workers) worker.kill();
      throw error;
    }
    announceListening(options, addresses);
    for (const worker of primary.workers) options.log.info(`Started worker ${worker.index}, pid ${worker.pid}`);
    logStartup(options, identity, aliases);
    if (options.dialInput) primary.readStdin(options.dialInput);
    return primary;
  }

  /** The sum of every worker's peers. */
  get peerCount(): number {
    return this.workers.reduce((sum, worker) => sum + worker.peers, 0);
  }

  /** Every worker is up (systemd's watchdog is fed only then). */
  get healthy(): boolean {
    return this.workers.every((worker) => worker.ready);
  }

  /** One table for the whole daemon: each worker's rows, after `worker N: `. */
  logStatus(): void {
    const request = this.nextRequest++;
    void this.gather((worker) => worker.send({ t: 'status', request }), (worker, message) => (message.t === 'status' && message.request === request ? message.rows.map((row) => `worker ${worker.index}: ${row}`) : undefined)).then((replies) => {
      const rows = replies.flat();
      this.options.log.notice(statusHeader(rows.length, this.listener.pendingHandshakes));
      for (const row of rows) this.options.log.notice(row);
    });
  }

  /** The files are read here, once; every worker takes what was read, or keeps what it has. */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(async () => {
      const identity = await reloadIdentity(this.options, this.identity);
      const credentials = identity === this.identity ? undefined : credentialsOf(identity);
      this.identity = identity;
      await this.gather((worker) => worker.send({ t: 'reload', credentials }), (_worker, message) => (message.t === 'reloaded' ? true : undefined));
    });
    return this.reloading;
  }

  shutdown(): Promise<void> {
    if (this.drained) return this.drained;
    this.stopping = true;
    stopTakingPeers(this.options, this.listener, this.slots);
    for (const [socket, { remote, timer }] of this.waiting) {
      clearTimeout(timer);
      this.listener.abandon(socket);
      this.listener.turnAway(socket, remote, 'shutting down');
    }
    this.waiting.clear();
    for (const worker of this.workers) worker.send({ t: 'shutdown' });
    this.drained = this.workers.some((worker) => worker.running) ? new Promise((resolve) => (this.allGone = resolve)) : Promise.resolve();
    return this.drained;
  }

  kill(): void {
    this.options.log.notice(`Killing ${this.slots.taken} remaining session(s)`);
    for (const worker of this.workers) worker.send({ t: 'kill' });
  }

  private fork(index: number): WorkerProcess {
    const { options } = this;
    const environment: Record<string, string> = {};
    for (const [name, value] of Object.entries(options.environment)) if (value !== undefined) environment[name] = value;
    const config: WorkerConfig = {
      index,
      credentials: credentialsOf(this.identity),
      command: options.command,
      args: [...options.args],
      endSignal: options.endSignal,
      requireCert: options.requireCert,
      certDir: options.certDir,
      aliasesFile: options.aliasesFile,
      proxy: options.proxy,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      spawnHelper: options.spawnHelper,
      environment,
      log: this.settings.log,
    };
    return new WorkerProcess(this.settings.program, config, this.identity, {
      message: (worker, message) => this.received(worker, message),
      gone: (worker, code, signal) => this.gone(worker, code, signal),
    });
  }

  private refusal(): string | undefined {
    return refusal(this.stopping, this.slots);
  }

  /** The worker with the fewest connections (taking turns among equals), of those up. */
  private pick(): WorkerProcess | undefined {
    let best: WorkerProcess | undefined;
    const count = this.workers.length;
    for (let step = 1; step <= count; step++) {
      const worker = this.workers[(this.lastPick + step) % count];
      if (worker?.ready && (!best || worker.connections.size < best.connections.size)) best = worker;
    }
    if (best) this.lastPick = best.index - 1;
    return best;
  }

  /**
   * An admitted connection goes to a worker: its descriptor, and the bytes read past a PROXY
   * header. The socket object stays here as the connection's stand-in for its limits.
   */
  private handOff(socket: Socket, remote: string, proxied: ProxiedEndpoints | undefined): void {
    const worker = this.pick();
    if (!worker) {
      // Listening starts before the workers are up (they are forked once privileges are dropped),
      // and a worker being replaced is not up either: a connection then waits for one, as long
      // as its handshake may take.
      if (!this.stopping && this.workers.some((other) => other.running)) {
        const timer = setTimeout(() => this.unwait(socket, remote), this.options.handshakeTimeoutMs);
        this.waiting.set(socket, { remote, proxied, timer });
        return;
      }
      this.listener.abandon(socket);
      this.listener.turnAway(socket, remote, 'no worker is running');
      return;
    }
    const id = this.nextId++;
    const rest = this.options.trustedProxies ? takeBuffered(socket) : undefined;
    // A peer slot is asked for once the handshake is done, as in one process: a slot given with the
    // connection would let anyone hold every slot with silent TCP connections (tried, and undone).
    worker.connections.set(id, { standIn: socket, slot: false, closed: false });
    socket.once('close', () => this.standInClosed(worker, id, socket));
    worker.send({ t: 'connection', id, remote, proxied, rest: rest?.toString('base64'), track: this.tracking }, socket);
  }

  /** With --max-per-ip a connection counts until it closes; otherwise only until its handshake ends. */
  private get tracking(): boolean {
    return this.options.maxPerAddress !== undefined;
  }

  /** After its handshake, a connection nothing counts is forgotten here (the worker will not say it closed). */
  private untrack(handed: Handed): void {
    if (this.tracking) return;
    this.closed(handed);
  }

  /** A connection that waited for a worker in vain: turned away. */
  private unwait(socket: Socket, remote: string): void {
    if (!this.waiting.delete(socket) || socket.destroyed) return;
    this.listener.abandon(socket);
    this.listener.turnAway(socket, remote, 'no worker is running');
  }

  /** A worker is up: the connections waiting for one go to the workers (those still open). */
  private handWaiting(): void {
    const waiting = [...this.waiting];
    this.waiting.clear();
    for (const [socket, { remote, proxied, timer }] of waiting) {
      clearTimeout(timer);
      if (!socket.destroyed) this.handOff(socket, remote, proxied);
    }
  }

  /** Closed here (evicted, past its deadline, refused): the worker closes its end too. */
  private standInClosed(worker: WorkerProcess, id: number, socket: Socket): void {
    const handed = worker.connections.get(id);
    if (!handed || handed.standIn !== socket) return;
    handed.standIn = undefined;
    if (!handed.closed) worker.send({ t: 'drop', id });
  }

  private received(worker: WorkerProcess, message: FromWorker): void {
    // What a dead worker said last arrives after its exit: gone() has settled its accounts already.
    if (!worker.running) return;
    for (const waiter of this.waiters) waiter(worker, message);
    switch (message.t) {
      case 'ready':
        // Forked before a reload it was not up for: it takes what the reload loaded.
        if (worker.identity !== this.identity) worker.send({ t: 'reload', credentials: credentialsOf(this.identity) });
        return this.handWaiting();
      case 'secure':
        return this.secure(worker, message.id);
      case 'failed': {
        const handed = worker.connections.get(message.id);
        if (!handed) return;
        if (handed.standIn) this.listener.handshakeFailed(handed.standIn, message.why);
        this.untrack(handed);
        if (handed.closed) worker.connections.delete(message.id);
        return;
      }
      case 'closed': {
        const handed = worker.connections.get(message.id);
        if (!handed) return;
        this.closed(handed);
        if (!handed.slot) worker.connections.delete(message.id);
        return;
      }
      case 'released': {
        const handed = worker.connections.get(message.id);
        if (!handed?.slot) return;
        handed.slot = false;
        this.slots.release();
        if (handed.closed) worker.connections.delete(message.id);
        return;
      }
      case 'peers':
        worker.peers = message.count;
        this.options.onPeerCount?.(this.peerCount);
        return;
      default:
        return;
    }
  }

  /** The connection is closed in its worker: its handshake slot (if still held) and --max-per-ip count are freed. */
  private closed(handed: Handed): void {
    handed.closed = true;
    const { standIn } = handed;
    handed.standIn = undefined;
    if (standIn) {
      this.listener.abandon(standIn);
      standIn.destroy();
    }
  }

  /** A handshake done in a worker: the peer gets a slot here (and is served there), or is turned away. */
  private secure(worker: WorkerProcess, id: number): void {
    const handed = worker.connections.get(id);
    if (!handed) return;
    const standIn = handed.standIn;
    if (!standIn) return; // dropped meanwhile: the worker was told
    const secured = this.listener.handshakeDone(standIn);
    if (!secured) return; // evicted or past its deadline: closed, and the worker told
    const why = this.refusal();
    if (why !== undefined || !this.slots.tryAcquire()) {
      this.listener.turnAway(standIn, secured.remote, why ?? 'peer limit reached');
      return;
    }
    handed.slot = true;
    worker.send({ t: 'serve', id });
    this.untrack(handed);
  }

  /** A worker died: what it held is freed, and a new worker takes its place. */
  private gone(worker: WorkerProcess, code: number | null, signal: NodeJS.Signals | null): void {
    for (const waiter of this.waiters) waiter(worker, undefined);
    // Its peers as the slots it held say (its own count reaches the primary at most every 100 ms).
    let sessions = 0;
    for (const handed of worker.connections.values()) {
      if (handed.slot) sessions++;
      this.closed(handed);
      if (handed.slot) this.slots.release();
    }
    worker.connections.clear();
    worker.peers = 0;
    if (this.stopping) {
      if (!this.workers.some((other) => other.running)) this.allGone?.();
      return;
    }
    this.options.onPeerCount?.(this.peerCount);
    this.options.log.error(`Worker ${worker.index} (pid ${worker.pid}) ${describeExit(code, signal)}: ${sessions} session(s) lost; starting it again`);
    const delay = Date.now() - worker.startedAt < QUICK_DEATH_MS ? RESTART_DELAY_MS : 0;
    setTimeout(() => this.replace(worker), delay).unref();
  }

  private replace(old: WorkerProcess): void {
    if (this.stopping) return;
    const worker = this.fork(old.index);
    this.workers[old.index - 1] = worker;
    worker.whenReady().then(
      () => this.options.log.info(`Started worker ${worker.index}, pid ${worker.pid}`),
      (error: unknown) => {
        this.options.log.error(reason(error));
        worker.kill(); // its exit starts another
      },
    );
  }

  private readStdin(input: Readable): void {
    void readDialLines({
      input,
      slots: this.slots,
      log: this.options.log,
      stopping: () => this.stopping,
      dial: (target) => {
        const worker = this.pick();
        if (!worker) {
          this.options.log.warning(`Cannot connect to ${formatAddress(target.host, target.port)}: no worker is running`);
          this.slots.release();
          return;
        }
        const id = this.nextId++;
        worker.connections.set(id, { slot: true, closed: true });
        worker.send({ t: 'dial', id, target });
      },
    });
  }

  /** Asks every worker that is up, and resolves with each one's answer (none from one that died or took too long). */
  private gather<T>(ask: (worker: WorkerProcess) => void, answer: (worker: WorkerProcess, message: FromWorker) => T | undefined): Promise<T[]> {
    const asked = new Set(this.workers.filter((worker) => worker.ready));
    const answers: T[] = [];
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve(answers);
      };
      const waiter: Waiter = (worker, message) => {
        if (!asked.has(worker)) return;
        const value = message === undefined ? undefined : answer(worker, message);
        if (message !== undefined && value === undefined) return;
        asked.delete(worker);
        if (value !== undefined) answers.push(value);
        if (asked.size === 0) done();
      };
      const timer = setTimeout(done, REPLY_TIMEOUT_MS);
      this.waiters.add(waiter);
      for (const worker of asked) ask(worker);
      if (asked.size === 0) done();
    });
  }
}

function credentialsOf(identity: Identity): Credentials {
  const { key, cert, ca } = identity.pem;
  return { key: key.toString(), cert: cert.toString(), ca: ca?.toString() };
}

/**
 * The bytes a PROXY header came with (the start of the ClientHello), taken out of the socket. Node
 * goes on reading a paused socket, so the read is stopped first (and again after, as reading the
 * buffer restarts it): from then the kernel keeps whatever comes next, for the worker.
 */
function takeBuffered(socket: Socket): Buffer | undefined {
  const handle = (socket as unknown as { _handle?: { readStop?: () => number } })._handle;
  handle?.readStop?.();
  const chunks: Buffer[] = [];
  for (let chunk: unknown = socket.read(); chunk !== null; chunk = socket.read()) if (Buffer.isBuffer(chunk)) chunks.push(chunk);
  handle?.readStop?.();
  return chunks.length > 0 ? Buffer.concat(chunks) : undefined;
}
