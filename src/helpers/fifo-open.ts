import { closeSync, constants, fstatSync, openSync, type BigIntStats } from 'node:fs';
import { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fifoProblem, Refused, replacementProblem } from './fifo-checks.js';
import type { PeerFifo } from './fifo-dir.js';

/*
 * FIFOs are opened here without ever blocking a thread: a blocking open(2) of a FIFO waits for
 * the other side, and Node's fs.open would park a libuv worker on it (four such and every file
 * operation in the process hangs). So opens are non-blocking, on the main thread, and the
 * descriptor goes to a net.Socket, which reads and writes a pipe through epoll, not the pool.
 *
 * Every open is by name in a directory a group shares. It goes through the descriptor of the
 * directory std2fifo checked at start (fifo-dir.ts), never through the directory's name; it never
 * follows a symbolic link, never takes a terminal as controlling tty, and keeps the descriptor
 * only if what it got is the FIFO std2fifo took at start and fifoProblem still finds nothing wrong
 * with it: anything else is closed at once and refused. So is the session once the directory's
 * name leads elsewhere.
 */

/**
 * Opens a FIFO for reading. Never waits: O_NONBLOCK opens at once even with no writer, and the
 * kernel reports no end of file to a reader that has not yet seen a writer, so the socket simply
 * waits for one. Its 'end' comes when the last writer has closed.
 */
export function openFifoReader(fifo: PeerFifo): Socket {
  return new Socket({ fd: openOwnFifo(fifo, constants.O_RDONLY), readable: true, writable: false });
}

/**
 * Opens a FIFO for writing once a reader has it open. O_WRONLY|O_NONBLOCK fails with ENXIO while
 * there is no reader; we retry on a timer (5 ms, growing to 100 ms). O_RDWR would open at once,
 * but what we wrote would sit in the pipe with nobody to read it and be lost when we closed it.
 */
export async function openFifoWriter(fifo: PeerFifo, signal?: AbortSignal): Promise<Socket> {
  let delay = 5;
  for (;;) {
    try {
      return new Socket({ fd: openOwnFifo(fifo, constants.O_WRONLY), readable: false, writable: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENXIO') throw error;
    }
    await sleep(delay, undefined, { signal });
    delay = Math.min(delay * 2, 100);
  }
}

/** Opens `fifo` for `access` if it is still the FIFO std2fifo took; throws Refused if it is not. */
function openOwnFifo(fifo: PeerFifo, access: number): number {
  fifo.dir.checkName();
  let fd: number;
  try {
    fd = openSync(fifo.dir.entry(fifo.name), access | constants.O_NONBLOCK | constants.O_NOFOLLOW | constants.O_NOCTTY);
  } catch (error) {
    // What the open met, when it says so only by an errno: a link (ELOOP), a directory (EISDIR), a
    // socket or a FIFO with no reader yet (ENXIO).
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'EISDIR' || code === 'ENXIO') refuseUnlessTaken(fifo, fifo.dir.lstat(fifo.name));
    throw error;
  }
  try {
    refuseUnlessTaken(fifo, fstatSync(fd, { bigint: true }));
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  return fd;
}

function refuseUnlessTaken(fifo: PeerFifo, stats: BigIntStats | undefined): void {
  const problem = (stats && fifoProblem(stats)) ?? replacementProblem(stats, fifo.id, 'FIFO');
  if (problem) throw new Refused(fifo.path, problem);
}

/**
 * Writes a chunk; resolves when the kernel has it, rejects on EPIPE and the like, and when `signal`
 * aborts (the session ended) rather than wait for a slow reader.
 */
export function writeChunk(socket: Socket, chunk: Buffer, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    const onAbort = (): void => void socket.destroy(signal?.reason as Error);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.write(chunk, (error) => {
      socket.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
      if (error) reject(error);
      else resolve();
    });
  });
}
