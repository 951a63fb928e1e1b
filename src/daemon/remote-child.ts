import type { Socket } from 'node:net';
import type { ChildEvents, ChildLike } from './child-like.js';

/**
 * If the helper reports an exit while a stdio connection is still missing, the connection may
 * still sit in the accept queue; after this long it was lost (tlsd out of descriptors).
 */
const STDIO_GRACE_MS = 2_000;
/** A started child whose stdio never arrives is killed after this long. */
const STDIO_TIMEOUT_MS = 10_000;

/** What a RemoteChild asks of the spawn helper that started it. */
export interface RemoteChildOwner {
  kill(child: RemoteChild, signal: NodeJS.Signals): void;
  /** It is gone (it failed, or exited and both streams closed): nothing will be reported of it any more. */
  forget(child: RemoteChild): void;
}

/**
 * A child started by the spawn helper. Its pid, its two stdio connections and its exit arrive
 * separately and in any order; they are put back in the order a ChildProcess reports them:
 * spawned (pid, stdin and stdout all there), then exited, then closed.
 */
export class RemoteChild implements ChildLike {
  pid: number | undefined;
  private input: Socket | undefined;
  private output: Socket | undefined;
  private spawned = false;
  private failed = false;
  private exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private stdioTimer: NodeJS.Timeout | undefined;
  private openStreams = 2;

  constructor(
    readonly id: number,
    readonly token: string,
    readonly command: string,
    private readonly owner: RemoteChildOwner,
    private readonly events: ChildEvents,
  ) {}

  /** Its stdin and stdout, once it is spawned: before that a connection may still be missing. */
  get stdin(): Socket | null {
    return this.spawned ? this.input! : null;
  }

  get stdout(): Socket | null {
    return this.spawned ? this.output! : null;
  }

  kill(signal: NodeJS.Signals): boolean {
    if (this.pid === undefined || this.exit || this.failed) return false;
    this.owner.kill(this, signal);
    return true;
  }

  /** One of the two connections, header already read: `i` is the child's stdin, `o` its stdout. */
  attach(which: 'i' | 'o', socket: Socket): void {
    if (this.failed || (which === 'i' ? this.input : this.output)) {
      socket.destroy();
      return;
    }
    if (which === 'i') this.input = socket;
    else this.output = socket;
    this.maybeSpawned();
  }

  started(pid: number): void {
    this.pid = pid;
    this.stdioTimer = setTimeout(() => {
      this.kill('SIGKILL');
      this.fail(new Error('its standard input and output never connected'));
    }, STDIO_TIMEOUT_MS);
    this.stdioTimer.unref();
    this.maybeSpawned();
  }

  exited(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exit || this.failed) return;
    this.exit = { code, signal };
    if (this.spawned) this.reportExit();
    else {
      this.stopStdioTimer();
      setTimeout(() => {
        if (!this.spawned) this.fail(new Error('its standard input and output never connected (out of file descriptors?)'));
      }, STDIO_GRACE_MS).unref();
    }
  }

  /** Could not start, or lost before it was wired: failed and nothing else, as spawn does. */
  fail(error: Error): void {
    if (this.spawned || this.failed) return;
    this.failed = true;
    this.stopStdioTimer();
    this.input?.destroy();
    this.output?.destroy();
    this.owner.forget(this);
    this.events.failed(error);
  }

  private maybeSpawned(): void {
    if (this.spawned || this.failed || this.pid === undefined || !this.input || !this.output) return;
    this.spawned = true;
    this.stopStdioTimer();
    // Whatever a child writes to its stdin is dropped, and reading lets us see its end.
    this.input.resume();
    // 'on': 'close' comes once, and once()'s wrapper would stay in memory for the session's life.
    const closed = (): void => this.streamClosed();
    for (const stream of [this.input, this.output]) stream.on('close', closed);
    this.events.spawned();
    if (this.exit) this.reportExit();
  }

  private reportExit(): void {
    const { code, signal } = this.exit!;
    this.events.exited(code, signal);
    if (this.openStreams === 0) this.close();
  }

  private streamClosed(): void {
    this.openStreams--;
    if (this.openStreams === 0 && this.exit) this.close();
  }

  private close(): void {
    this.owner.forget(this);
    this.events.closed();
  }

  /** A cleared timer still kept in a field would cost every idle peer its memory. */
  private stopStdioTimer(): void {
    clearTimeout(this.stdioTimer);
    this.stdioTimer = undefined;
  }
}
