import { constants, openSync } from 'node:fs';
import { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/*
 * FIFOs are opened here without ever blocking a thread: a blocking open(2) of a FIFO waits for
 * the other side, and Node's fs.open would park a libuv worker on it (four such and every file
 * operation in the process hangs). So opens are non-blocking, on the main thread, and the
 * descriptor goes to a net.Socket, which reads and writes a pipe through epoll, not the pool.
 */

/**
 * Opens a FIFO for reading. Never waits: O_NONBLOCK opens at once even with no writer, and the
 * kernel reports no end of file to a reader that has not yet seen a writer, so the socket simply
 * waits for one. Its 'end' comes when the last writer has closed.
 */
export function openFifoReader(path: string): Socket {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  return new Socket({ fd, readable: true, writable: false });
}

/**
 * Opens a FIFO for writing once a reader has it open. O_WRONLY|O_NONBLOCK fails with ENXIO while
 * there is no reader; we retry on a timer (5 ms, growing to 100 ms). O_RDWR would open at once,
 * but what we wrote would sit in the pipe with nobody to read it and be lost when we closed it.
 */
export async function openFifoWriter(path: string, signal?: AbortSignal): Promise<Socket> {
  let delay = 5;
  for (;;) {
    try {
      const fd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
      return new Socket({ fd, readable: false, writable: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENXIO') throw error;
    }
    await sleep(delay, undefined, { signal });
    delay = Math.min(delay * 2, 100);
  }
}

/** Writes a chunk; resolves when the kernel has it, rejects on EPIPE and the like. */
export function writeChunk(socket: Socket, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    socket.once('error', onError);
    socket.write(chunk, (error) => {
      socket.off('error', onError);
      if (error) reject(error);
      else resolve();
    });
  });
}
