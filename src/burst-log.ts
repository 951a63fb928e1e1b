import type { Logger } from './logger.js';

/**
 * A warning that a remote client can cause once per connection it opens, at will: the first of a
 * burst is logged in full at once, the rest are counted and told in one line per interval, so that
 * a thousand of them cost the log a few lines, and a flood of them one line every interval.
 */
export class BurstLog {
  private more = 0;
  private lastDetail = '';
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Pick<Logger, 'warning'>,
    private readonly intervalMs: number,
    /** The line for `count` events after the one logged in full; `last` is the detail of the latest. */
    private readonly summary: (count: number, seconds: number, last: string) => string,
  ) {}

  /** One event: `line` is logged now if it starts a burst; `detail` names it in the summary otherwise. */
  report(line: string, detail: string): void {
    if (this.timer === undefined) {
      this.log.warning(line);
      this.startInterval();
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
  }

  private startInterval(): void {
    // Unreferenced: a pending summary never keeps tlsd running; shutdown flushes it.
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // The burst goes on: the next interval counts it too. A quiet interval ends the burst.
      if (this.tell()) this.startInterval();
    }, this.intervalMs).unref();
  }

  private tell(): boolean {
    if (this.more === 0) return false;
    this.log.warning(this.summary(this.more, Math.round(this.intervalMs / 1000), this.lastDetail));
    this.more = 0;
    return true;
  }
}
