import type { Socket } from 'node:net';
import type { Writable } from 'node:stream';

/** How long a shutdown under way is waited for before the socket is simply closed. */
const SHUTDOWN_WAIT_MS = 2_000;

/**
 * Ends a TCP connection with a reset (RST), as a crashing peer or a middlebox would. `over` is a
 * stream written through the socket (a TLS client over it), whose end shuts the socket down too.
 *
 * Node (20, 22 and 24) cannot reset a socket whose shutdown is under way: libuv refuses with
 * EINVAL, but Node has already marked the handle closing and never closes it, and the process
 * then spins at full CPU when it exits (in Environment::CleanupHandles, waiting for that handle)
 * until tap's timeout kills it. A socket whose writing side was ended is therefore reset once its
 * shutdown is done ('finish'), or closed if that takes longer than SHUTDOWN_WAIT_MS.
 */
export function resetSocket(raw: Socket, over?: Writable): void {
  const ending = [raw, over].filter((stream): stream is Writable => stream !== undefined && stream.writableEnded && !stream.writableFinished);
  if (ending.length === 0) {
    raw.resetAndDestroy();
    return;
  }
  let waiting = ending.length;
  const timer = setTimeout(() => raw.destroy(), SHUTDOWN_WAIT_MS);
  raw.once('close', () => clearTimeout(timer));
  for (const stream of ending) {
    stream.once('finish', () => {
      if (--waiting > 0 || raw.destroyed) return;
      clearTimeout(timer);
      raw.resetAndDestroy();
    });
  }
}
