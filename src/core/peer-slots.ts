/**
 * The --max-peers slots, a counting semaphore: a connection holds one from its handshake (or its
 * dial line) to the end of its child. Incoming connections over the limit are refused at once;
 * outgoing ones (stdin lines) wait in order for a free slot instead of being dropped. The peers
 * themselves are Daemon.sessions.
 */
export class PeerSlots {
  private count = 0;
  private readonly waiters: Array<(granted: boolean) => void> = [];

  constructor(readonly max: number) {}

  get taken(): number {
    return this.count;
  }

  tryAcquire(): boolean {
    if (this.count >= this.max) return false;
    this.count++;
    return true;
  }

  /** Resolves true once a slot is ours, or false if the slots were closed while waiting. */
  acquire(): Promise<boolean> {
    if (this.tryAcquire()) return Promise.resolve(true);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next(true); // the slot passes straight to the next waiter
    else this.count--;
  }

  /** Shutdown: nobody waiting gets a slot. */
  close(): void {
    for (const waiter of this.waiters.splice(0)) waiter(false);
  }
}
