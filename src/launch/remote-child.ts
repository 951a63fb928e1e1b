import type { Socket } from 'node:net';
import type { ChildEvents, ChildLike } from './launch.js';

/** The child a stream from the helper belongs to, for RemoteChild's shared listener. */
const owner = Symbol('child');
type Owned = { [owner]?: RemoteChild };

/** What a RemoteChild asks of the spawn helper that started it. */
export interface RemoteChildOwner {
  kill(child: RemoteChild, signal: NodeJS.Signals): void;
  /** It is gone (it failed, or exited and both streams closed): nothing will be reported of it any more. */
  forget(child: RemoteChild): void;
}

/**
 * A child started by the spawn helper. The helper reports, in this order on one channel: tlsd's
 * ends of the child's stdin and stdout, then `started` with its pid (or `failed`), later `exited`.
 * They are passed on in the order a ChildProcess reports them: spawned, exited, then closed once
 * both streams are closed too.
 */
export class RemoteChild implements ChildLike {
  pid: number | undefined;
  private input: Socket | undefined;
  private output: Socket | undefined;
  private spawned = false;
  private failed = false;
  private exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private openStreams = 2;

  constructor(
    readonly id: number,
    readonly command: string,
    private readonly owner: RemoteChildOwner,
    private readonly events: ChildEvents,
  ) {}

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

  /** tlsd's end of the child's stdin or stdout, passed by the helper. */
  attach(which: 'stdin' | 'stdout', socket: Socket): void {
    if (this.failed || this.spawned || (which === 'stdin' ? this.input : this.output)) {
      socket.destroy();
      return;
    }
    if (which === 'stdin') this.input = socket;
    else this.output = socket;
    // Counted from now: a stream can close before `started` (Node reads a received socket at once,
    // and ends and closes it at EOF when its child exits quickly), and a 'close' nobody heard
    // would keep the child, and its session, forever. One listener shared by every child (a
    // closure, or once()'s wrapper, would stay in memory for the session's life).
    (socket as Owned)[owner] = this;
    socket.on('close', RemoteChild.onStreamClose);
  }

  /**
   * Running: both ends came before this report on the same channel, unless a descriptor was lost
   * on the way (Node drops a message whose descriptor could not be received: tlsd was out of
   * descriptors). Then the child is killed and has failed.
   */
  started(pid: number): void {
    if (this.failed || this.spawned) return;
    this.pid = pid;
    if (!this.input || !this.output) {
      this.owner.kill(this, 'SIGKILL');
      this.fail(new Error('its standard input and output did not arrive (out of file descriptors?)'));
      return;
    }
    this.spawned = true;
    // Whatever a child writes to its stdin is dropped, and reading lets us see its end.
    this.input.resume();
    this.events.spawned();
  }

  exited(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exit || this.failed) return;
    this.exit = { code, signal };
    if (!this.spawned) {
      this.fail(new Error('it exited before it was reported started'));
      return;
    }
    this.events.exited(code, signal);
    if (this.openStreams === 0) this.close();
  }

  /** Could not start, or lost before it was wired: failed and nothing else, as spawn does. */
  fail(error: Error): void {
    if (this.spawned || this.failed) return;
    this.failed = true;
    this.input?.destroy();
    this.output?.destroy();
    this.owner.forget(this);
    this.events.failed(error);
  }

  private static onStreamClose(this: Owned): void {
    this[owner]?.streamClosed();
  }

  private streamClosed(): void {
    this.openStreams--;
    if (this.openStreams === 0 && this.exit && this.spawned) this.close();
  }

  private close(): void {
    this.owner.forget(this);
    this.events.closed();
  }
}
