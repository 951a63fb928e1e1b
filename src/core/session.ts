import type { TLSSocket } from 'node:tls';
import type { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { trace, tracing } from '../log/trace.js';
import { connectionLost, descriptorOf } from '../os/tcp-probe.js';
import type { Environment } from '../launch/launch.js';
import type { ChildEvents, ChildLike, Launch } from '../launch/launch.js';
import { signalNumber } from '../os/signal-names.js';
import { forward, unforward } from './forward.js';

/** The session a peer's socket or its child's stdin belongs to, for Session's shared listeners. */
const owner = Symbol('session');
type Owned = { [owner]?: Session };

/** What every session of a daemon shares: made once, so that an idle peer does not pay for a copy. */
export interface SessionSettings {
  command: string;
  args: readonly string[];
  /**
   * -s: sent to the child, once, when tlsd ends its stdin (see endChild); none by default: EOF on
   * stdin says it.
   */
  endSignal: NodeJS.Signals | undefined;
  log: Logger;
  /** How the child is started: Node's spawn, or the spawn helper. */
  launch: Launch;
  /** Called once, when both the connection and the child are gone. */
  ended: (session: Session) => void;
}

/**
 * After our side has finished (child exited, its output delivered, close_notify sent) the peer gets
 * this long to close its side. Closing at once could reset the connection and make the peer's
 * kernel drop our last bytes. At shutdown, it is also how long the rest of an exited child's output
 * has to reach the peer.
 */
const LINGER_MS = 10_000;
/** During shutdown nobody waits that long for a FIN: a moment for the peer's, then close. */
const SHUTDOWN_LINGER_MS = 1_000;

/**
 * Where a session is, in the order it gets there, named after its child: `new` until start()
 * launches it; `starting` once launched, until it runs (or fails: then `gone`); `running`; `told`,
 * still running once endChild has told it (stdin ended, -s sent), never twice; `exited`, its
 * output perhaps still on the way; `gone`, nothing more of it to wait for; `ended` once the
 * connection is closed too and `settings.ended` has been called, once.
 */
type Phase = 'new' | 'starting' | 'running' | 'told' | 'exited' | 'gone' | 'ended';

/**
 * One peer: the decrypted stream wired to one child's stdin and stdout. Each direction ends on its
 * own (half-close), and nothing the child wrote is lost because the peer stopped sending, or the
 * other way round. `settings.ended` is called once both the connection and the child are gone.
 */
export class Session implements ChildEvents {
  private child: ChildLike | undefined;
  private phase: Phase = 'new';
  /**
   * The connection is closed. It and the two below are the connection's, apart from the phase:
   * they come in any order relative to the child's events (a peer may leave before its child
   * starts, or long after it exited), and the peer's side and ours end independently (half-close).
   */
  private socketClosed = false;
  /** The peer ended its side (FIN or close_notify): the child's stdin ends there too. */
  private peerEnded = false;
  /** Our side is flushed: all the child's output reached the peer's kernel, close_notify sent. */
  private outputFlushed = false;
  /** The daemon's shutdown, which comes at any phase and shortens the linger (lingerIfDone). */
  private shuttingDown = false;
  /** Closes the connection once our side is over (see lingerIfDone); none while the child runs. */
  private linger: { timer: NodeJS.Timeout; at: number } | undefined;
  /** Once the child has exited with output still to deliver: checks that the peer takes it. */
  private stallWatch: NodeJS.Timeout | undefined;

  /**
   * `label` names the peer in log lines (e.g. `127.0.0.1:40312`); `env` is the connection's
   * variables, added to the launcher's base environment, and is let go once the child is launched:
   * held for the session's life it would cost every idle peer.
   */
  constructor(
    private readonly socket: TLSSocket,
    private readonly options: SessionSettings,
    readonly label: string,
    private env: Environment | undefined,
  ) {}

  /** When the child started (ms since the epoch), for SIGUSR1's table. */
  readonly startedAt = Date.now();

  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }

  /** Bytes from the peer, and to it, so far. */
  get bytesIn(): number {
    return this.socket.bytesRead;
  }

  get bytesOut(): number {
    return this.socket.bytesWritten;
  }

  // Listeners shared by every session (a closure each would cost every idle peer): each finds its
  // session through the stream's `owner`.

  private static onSocketError(this: Owned, error: Error): void {
    const session = this[owner];
    if (!session) return;
    if (tracing) trace('%s: connection error: %s', session.label, reason(error));
    if (!session.socketClosed) session.options.log.info(`${session.label}: connection error: ${reason(error)}`);
    // A TLS protocol error (a malformed record, a fatal alert) leaves Node's socket open.
    session.socket.destroy();
  }

  private static onSocketClose(this: Owned): void {
    this[owner]?.onSocketClosed();
  }

  private static onSocketEnd(this: Owned): void {
    this[owner]?.onPeerEnded();
  }

  private static onSocketFinish(this: Owned): void {
    const session = this[owner];
    if (!session) return;
    trace('%s: output flushed', session.label);
    session.outputFlushed = true;
    session.lingerIfDone();
  }

  private static onStdinGone(this: Owned): void {
    this[owner]?.discardInput();
  }

  start(): void {
    const { socket, options } = this;
    (socket as Owned)[owner] = this;
    socket.on('error', Session.onSocketError);
    socket.on('close', Session.onSocketClose);
    // Forwarded without ending stdin: the end of the peer's side is endChild's to pass on, -s and all.
    socket.on('end', Session.onSocketEnd);
    socket.on('finish', Session.onSocketFinish);

    try {
      const env = this.env!;
      this.env = undefined;
      this.child = options.launch({ command: options.command, args: options.args, env }, this);
    } catch (error) {
      this.onSpawnFailed(error);
      return;
    }
    this.phase = 'starting';
    // A peer that ended its side before the session began (between its handshake and now: a
    // worker waits for the primary's slot, -d waits for the disk) has had its 'end' already,
    // emitted while nothing listened: without this the child would never get EOF.
    if (socket.readableEnded) this.onPeerEnded();
  }

  // The child's events (ChildEvents), in the order it reports them.

  spawned(): void {
    const { socket, options } = this;
    const child = this.child!;
    this.phase = 'running';
    options.log.info(`${this.label}: started child ${child.pid}`);
    trace('%s: launched child %d', this.label, child.pid);
    const stdin = child.stdin!;
    const stdout = child.stdout!;
    // A child that exits without reading its input must not cost the peer the output it made:
    // from then on the peer's data is read and dropped. A stream that is already closed reports
    // no write error at all (the helper's child may be gone before it is wired), hence 'close'.
    (stdin as Owned)[owner] = this;
    stdin.on('error', Session.onStdinGone);
    stdin.on('close', Session.onStdinGone);
    if (this.socketClosed) {
      // The peer left while the child was starting: it gets EOF (and -s) at once.
      this.cutOffChild();
      return;
    }
    if (stdin.destroyed) this.discardInput();
    else forward(socket, stdin, false);
    forward(stdout, socket, true);
    if (tracing) stdout.once('end', () => trace('%s: child EOF', this.label));
    // The peer ended, or shutdown began, while the child was starting: it gets what it missed.
    if (this.peerEnded || this.shuttingDown) this.endChild();
  }

  failed(error: Error): void {
    if (this.phase !== 'starting') {
      this.options.log.warning(`${this.label}: child ${this.child?.pid}: ${reason(error)}`);
      return;
    }
    this.onSpawnFailed(error);
  }

  exited(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.running) this.phase = 'exited';
    trace('%s: child exited, status %s, signal %s', this.label, code, signal);
    const { log } = this.options;
    // The original's lines: the pid tells the child, and `started child` tells whose it was.
    const pid = this.child?.pid;
    if (signal) log.notice(`Process ${pid} was terminated by signal ${signalNumber(signal)}`);
    else if (code !== null) log.info(`Process ${pid} has exited with status ${code}`);
    else log.warning(`${this.label}: the exit status of process ${pid} is lost`);
    if (this.socketClosed) this.releaseChild();
    else this.lingerIfDone();
  }

  /** Also after `failed` (Node's spawn reports both), which onChildGone has already seen to. */
  closed(): void {
    this.onChildGone();
  }

  /**
   * Called now and then: a connection Node is not reading from (the peer ended its side, or the
   * child is not keeping up) would never show a reset, and its child would wait forever.
   */
  probe(): void {
    const { socket } = this;
    if (this.socketClosed || socket.destroyed || (socket.readableFlowing === true && !socket.readableEnded)) return;
    const fd = descriptorOf(socket);
    const lost = fd === undefined ? undefined : connectionLost(fd);
    if (lost === undefined) return;
    this.options.log.info(`${this.label}: connection lost (${lost})`);
    trace('%s: close: connection lost (%s)', this.label, lost);
    socket.destroy();
  }

  /**
   * Shutdown: the child sees EOF (and the -s signal); its output still reaches the peer, and once it
   * has exited the session ends within the shutdown's linger (lingerIfDone), whatever the peer does.
   */
  end(): void {
    this.shuttingDown = true;
    this.endChild();
    this.lingerIfDone();
  }

  /** Second shutdown signal: no more waiting. */
  kill(): void {
    if (this.running) this.child?.kill('SIGKILL');
    trace('%s: close: killed at shutdown', this.label);
    this.socket.destroy();
  }

  private onSpawnFailed(error: unknown): void {
    const { options } = this;
    options.log.error(`${this.label}: Failed to execute ${JSON.stringify(options.command)}: ${reason(error)}`);
    if (tracing) trace('%s: launch failed: %s', this.label, reason(error));
    unforward(this.socket);
    this.discardInput();
    this.socket.end();
    this.onChildGone();
  }

  private onSocketClosed(): void {
    trace('%s: connection closed', this.label);
    this.socketClosed = true;
    clearTimeout(this.linger?.timer);
    this.linger = undefined;
    clearInterval(this.stallWatch);
    this.stallWatch = undefined;
    this.cutOffChild();
    if (!this.running && this.phase !== 'starting') this.releaseChild();
    this.finishIfDone();
  }

  /** The peer has ended its side: the child gets EOF (and -s); what it writes still goes to the peer. */
  private onPeerEnded(): void {
    trace('%s: peer EOF', this.label);
    this.peerEnded = true;
    this.endChild();
  }

  /** The peer is gone: the child gets EOF (and -s), and is drained so it never blocks on output. */
  private cutOffChild(): void {
    const stdout = this.child?.stdout;
    if (stdout) {
      unforward(stdout);
      stdout.resume();
    }
    this.endChild();
  }

  /**
   * The child has exited and the peer is gone: nothing can reach anyone any more, so a process the
   * child left behind holding its stdout (`sh -c 'cmd; sleep 99'` killed by -s) keeps no session.
   */
  private releaseChild(): void {
    this.child?.stdin?.destroy();
    this.child?.stdout?.destroy();
    this.onChildGone();
  }

  private onChildGone(): void {
    if (this.phase === 'gone' || this.phase === 'ended') return;
    this.phase = 'gone';
    this.lingerIfDone();
    this.finishIfDone();
  }

  /**
   * EOF on the child's stdin, and the -s signal: when the peer ends its side, when the connection
   * is closed, or at shutdown, whichever comes first. A running child is told once (the signal is
   * sent at once, not when it has read its input: -s is for children that never read it); one
   * still starting is told when it runs (spawned).
   */
  private endChild(): void {
    this.endChildInput();
    if (this.phase !== 'running') return;
    this.phase = 'told';
    const { log, endSignal } = this.options;
    trace('%s: child told to end, signal %s', this.label, endSignal ?? 'none');
    log.info(`Waiting for process ${this.child?.pid} to exit`);
    if (endSignal) this.child?.kill(endSignal);
  }

  private endChildInput(): void {
    const stdin = this.child?.stdin;
    if (stdin && !stdin.writableEnded && !stdin.destroyed) {
      trace('%s: half-close: child stdin ended', this.label);
      unforward(this.socket);
      stdin.end();
    }
  }

  private discardInput(): void {
    unforward(this.socket);
    this.socket.resume();
  }

  /**
   * Closes the connection a while after our side is over: the child has exited and its output is
   * flushed, close_notify sent. The child's `closed` is not awaited: once its output is flushed
   * nothing more of it matters to the peer, and a launcher that never reports it (a stdio stream
   * that closed unseen) must not keep the session forever. Closing ends the session
   * (onSocketClosed). At shutdown the peer has SHUTDOWN_LINGER_MS once the output is flushed, and
   * LINGER_MS to take what is left of it (or for a process the child left holding its stdout):
   * once every child has exited, shutdown ends within that bound, whatever the peers do. Called
   * again as things change, it only ever brings the close nearer.
   */
  private lingerIfDone(): void {
    if (this.socketClosed || this.running || this.phase === 'starting') return;
    if (!this.outputFlushed && !this.shuttingDown) {
      this.watchForStall();
      return;
    }
    const ms = this.outputFlushed && this.shuttingDown ? SHUTDOWN_LINGER_MS : LINGER_MS;
    const at = Date.now() + ms;
    if (this.linger && this.linger.at <= at) return;
    clearTimeout(this.linger?.timer);
    this.linger = { timer: setTimeout(() => this.closeLingered(), ms).unref(), at };
  }

  /**
   * The child has exited, its output is not all delivered: a peer that reads none of it (its
   * kernel still acknowledging, so keepalive never fails) would otherwise hold its peer slot for
   * good. Stalled means output waits in tlsd for the peer (writableLength) and none of it left
   * for LINGER_MS (what has left, bytesWritten less what waits, did not grow); a process the
   * child left behind that is merely silent is no stall, as nothing waits then.
   */
  private watchForStall(): void {
    if (this.stallWatch) return;
    const { socket } = this;
    const gone = (): number => socket.bytesWritten - socket.writableLength;
    let before = gone();
    this.stallWatch = setInterval(() => {
      if (socket.writableLength > 0 && gone() === before) {
        this.options.log.info(`${this.label}: the peer took none of its child's output for ${LINGER_MS / 1000} s after the child exited; connection closed`);
        trace('%s: close: the peer took no output', this.label);
        socket.destroy();
      }
      before = gone();
    }, LINGER_MS).unref();
  }

  /** The child runs (told or not): it has a pid, and can be signalled. */
  private get running(): boolean {
    return this.phase === 'running' || this.phase === 'told';
  }

  private closeLingered(): void {
    trace('%s: close: linger over', this.label);
    this.socket.destroy();
  }

  private finishIfDone(): void {
    if (!this.socketClosed || this.phase !== 'gone') return;
    this.phase = 'ended';
    trace('%s: end', this.label);
    this.options.ended(this);
  }
}
