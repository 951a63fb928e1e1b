import type { Logger } from './logger.js';

/**
 * A warning that a remote client can cause once per connection it opens, at will: the first
 * `inFull` of each interval are logged in full at once, the rest are counted and told in one line
 * at the end of the interval, so that a flood costs the log a few lines an interval, however fast
 * it comes, and cannot drown the other lines (or trip the journal's rate limit, which would drop
 * them). A quiet interval ends the burst.
 */
export class BurstLog {
  private more = 0;
  private lastDetail = '';
  private told = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Pick<Logger, 'warning'>,
    private readonly intervalMs: number,
    /** The line for `count` events beyond those logged in full; `last` is the detail of the latest. */
    private readonly summary: (count: number, seconds: number, last: string) => string,
    private readonly inFull = 1,
  ) {}

  /** One event: `line` is logged now if the interval has room; `detail` names it in the summary otherwise. */
  report(line: string, detail: string): void {
    this.timer ??= this.startInterval();
    if (this.told < this.inFull) {
      this.told++;
      this.log.warning(line);
      return;
    }
    this.more++;
    this.lastDetail = detail;
  }

  /** Logs what is counted and not told yet (at shutdown). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.tell();
    this.told = 0;
  }

  // Unreferenced: a pending summary never keeps tlsd running; shutdown flushes it.
  private startInterval(): NodeJS.Timeout {
    return setTimeout(() => {
      const busy = this.told > 0;
      this.timer = undefined;
      this.tell();
      this.told = 0;
      // The burst goes on while something happened; a quiet interval ends it.
      if (busy) this.timer = this.startInterval();
    }, this.intervalMs).unref();
  }

  private tell(): void {
    if (this.more === 0) return;
    this.log.warning(this.summary(this.more, Math.round(this.intervalMs / 1000), this.lastDetail));
    this.more = 0;
  }
}
