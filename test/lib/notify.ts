import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import PosixSocket from 'posix-socket';
import { tempDir } from './identity.js';
import { keyValues } from './text.js';
import type { Teardown } from './tlsd.js';

// Linux values; posix-socket does not export them (as in src/os/datagram.ts).
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const EAGAIN = 11;
/** systemd reads at most this much of one notification; anything longer is a bug of its own. */
const MAX_DATAGRAM = 4096;

export interface Notification {
  /** Date.now() when the test read it (within one polling interval of its arrival). */
  at: number;
  /** The datagram as sent: `KEY=value` lines. */
  text: string;
  fields: Map<string, string>;
}

/**
 * What systemd's side of NOTIFY_SOCKET is: a unix datagram socket bound to a path. The test
 * polls it (non-blocking, MSG_DONTWAIT) so nothing ever blocks the event loop, and keeps every
 * datagram in the order it arrived.
 */
export class NotifySocket {
  readonly path: string;
  readonly received: Notification[] = [];
  private fd: number | undefined;
  private readonly buffer = new ArrayBuffer(MAX_DATAGRAM);

  constructor(t: Teardown) {
    const dir = tempDir('tlsd-notify-');
    this.path = join(dir, 'notify');
    this.fd = PosixSocket.socket(PosixSocket.AF_UNIX, PosixSocket.SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    PosixSocket.bind(this.fd, { sun_family: PosixSocket.AF_UNIX, sun_path: this.path });
    t.teardown(() => {
      this.close();
      rmSync(dir, { recursive: true, force: true });
    });
  }

  /** Reads every datagram waiting now; returns how many. */
  poll(): number {
    if (this.fd === undefined) return 0;
    let count = 0;
    for (;;) {
      let size: number;
      try {
        size = PosixSocket.recv(this.fd, this.buffer, MAX_DATAGRAM, PosixSocket.MSG_DONTWAIT);
      } catch (error) {
        if ((error as { errno?: number }).errno === EAGAIN) return count;
        throw error;
      }
      const text = Buffer.from(this.buffer, 0, size).toString('utf8');
      this.received.push({ at: Date.now(), text, fields: keyValues(text) });
      count++;
    }
  }

  /**
   * Resolves with the first datagram from index `from` on that `matches`, polling every 20 ms for
   * at most `ms`; rejects with everything received so far otherwise.
   */
  async waitFor(matches: (n: Notification) => boolean, what: string, from = 0, ms = 10_000): Promise<Notification & { index: number }> {
    const deadline = Date.now() + ms;
    for (;;) {
      this.poll();
      const index = this.received.findIndex((n, i) => i >= from && matches(n));
      if (index >= 0) return { ...this.received[index]!, index };
      if (Date.now() > deadline) throw new Error(`no notification ${what} within ${ms} ms; got ${JSON.stringify(this.texts())}`);
      await sleep(20);
    }
  }

  /** Keeps polling for `ms`: what arrives meanwhile is in `received`. */
  async collect(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      this.poll();
      await sleep(20);
    }
    this.poll();
  }

  texts(): string[] {
    return this.received.map((n) => n.text);
  }

  close(): void {
    if (this.fd !== undefined) PosixSocket.close(this.fd);
    this.fd = undefined;
  }
}

/** A notification that sets `key` (to `value`, if given). */
export const has =
  (key: string, value?: string) =>
  (n: Notification): boolean =>
    n.fields.has(key) && (value === undefined || n.fields.get(key) === value);
