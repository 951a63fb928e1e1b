import { readSync, writeSync } from 'node:fs';

const pause = new Int32Array(new SharedArrayBuffer(4));

/** Waits a little without spinning, for a descriptor that said EAGAIN. */
function sleep(ms: number): void {
  Atomics.wait(pause, 0, 0, ms);
}

export type FdLine = { line: string } | { eof: true } | { tooLong: true };

/**
 * Reads one line from a descriptor (a pipe, a socket, a terminal, a file) one byte at a time, so
 * that not one byte after the newline is consumed: whatever follows stays for the next reader of
 * the descriptor (the command fp2alias runs). A trailing CR is dropped. At most `max` bytes.
 */
export function readLineFromFd(fd: number, max: number): FdLine {
  const bytes: number[] = [];
  const byte = Buffer.alloc(1);
  for (;;) {
    let count: number;
    try {
      count = readSync(fd, byte, 0, 1, null);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EAGAIN') {
        sleep(10); // a non-blocking descriptor handed down to us: poll gently
        continue;
      }
      throw error;
    }
    if (count === 0) return bytes.length > 0 ? { line: decode(bytes) } : { eof: true };
    if (byte[0] === 10) return { line: decode(bytes) };
    if (bytes.length >= max) return { tooLong: true };
    bytes.push(byte[0]!);
  }
}

function decode(bytes: number[]): string {
  return Buffer.from(bytes).toString('utf8').replace(/\r$/, '');
}

/** Writes all of `text` to a descriptor now, before anything else can (the peer reads it in order). */
export function writeAllToFd(fd: number, text: string): void {
  let data = Buffer.from(text);
  while (data.length > 0) {
    try {
      data = data.subarray(writeSync(fd, data));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error;
      sleep(10);
    }
  }
}
