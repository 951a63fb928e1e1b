import type { Socket } from 'node:net';
import { addAbortSignal, type Readable, type Writable } from 'node:stream';
import type { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { Refused } from './fifo-checks.js';
import { FifoDir, type PeerFifo } from './fifo-dir.js';
import { openFifoReader, openFifoWriter, writeChunk } from './fifo-open.js';

export interface Std2fifoOptions {
  /** The root directory; the pair goes in `<root>/<name>/`. */
  root: string;
  /** One path component: the value of the -v variable. */
  name: string;
  /** -c: keep `out` open across messages, and do not reopen `in` after its end. */
  continuous: boolean;
  log: Logger;
  input: Readable;
  /** Called on first use: setting up process.stdout is a cost a run that prints nothing need not pay. */
  output: () => Writable;
}

/**
 * Copies `input` to the `out` FIFO and the `in` FIFO to `output` until `input` ends; resolves with
 * the exit status. In message mode each chunk of input is one message: `out` is opened for it and
 * closed after it, and `in` is reopened whenever its writers have all closed. In continuous mode
 * `out` is opened once and kept, and the end of `in` ends `output`. A FIFO that cannot be opened
 * (fifo-checks.ts refuses it, or it is gone) ends the session with status 1.
 *
 * std2fifo never removes or remakes a FIFO or the directory: they stay for the peer's next session.
 * It makes them only at start, so a FIFO that is not the one it took then is never its own doing.
 */
export async function std2fifo(options: Std2fifoOptions): Promise<number> {
  const dir = FifoDir.prepare(options.root, options.name);
  try {
    return await session(dir, options);
  } finally {
    dir.close();
  }
}

async function session(dir: FifoDir, options: Std2fifoOptions): Promise<number> {
  const { log, output } = options;
  const ended = new AbortController();
  const inbound = new Inbound(dir.in, output, options.continuous, log, (error) => ended.abort(error));
  const input = addAbortSignal(ended.signal, options.input);
  let writer: Socket | undefined;
  let status = 0;
  try {
    for await (const chunk of input as AsyncIterable<Buffer>) {
      if (options.continuous) {
        writer ??= await openFifoWriter(dir.out, ended.signal);
        await writeChunk(writer, chunk, ended.signal);
        continue;
      }
      await deliverMessage(dir.out, chunk, log, ended.signal);
    }
  } catch (error) {
    // Ended by Inbound, which said why; or by `out`.
    if (!ended.signal.aborted) log.error(endOfSession(dir.out, error));
    status = 1;
  } finally {
    writer?.destroy();
    inbound.stop();
  }
  await inbound.flushed();
  return status;
}

/** The line that ends a session on a FIFO's failure; a refusal names its path itself. */
function endOfSession(fifo: PeerFifo, error: unknown): string {
  return `${error instanceof Refused ? error.message : `${fifo.path}: ${reason(error)}`}; ending the session`;
}

/**
 * Writes one message on its own opening of `out`. A reader that has just seen the end of the
 * previous message may still hold `out` when we open it and close it before reading: the write
 * then fails with EPIPE and no byte of it was read, so the message is sent again to the next
 * reader. (What such a reader cannot make fail is a write that lands in the pipe before it closes;
 * readers avoid that by keeping `out` open across messages, see std2fifo(1).)
 */
async function deliverMessage(fifo: PeerFifo, chunk: Buffer, log: Logger, signal: AbortSignal): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const message = await openFifoWriter(fifo, signal);
    try {
      await writeChunk(message, chunk, signal);
      return;
    } catch (error) {
      if (signal.aborted) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'EPIPE' || attempt === MESSAGE_ATTEMPTS) {
        log.warning(`${fifo.path}: ${reason(error)}; a message of ${chunk.length} bytes was not delivered`);
        return;
      }
    } finally {
      message.destroy();
    }
  }
}

const MESSAGE_ATTEMPTS = 3;

/**
 * The `in` FIFO to `output`, with backpressure, reopened after each end in message mode. The first
 * open throws; a later one that fails logs why and calls `end`, which ends the session.
 */
class Inbound {
  private current: Socket | undefined;
  private ended = false;
  /** After stop() nothing opens `in` again: the directory's descriptor is about to be closed. */
  private stopped = false;
  private made: Writable | undefined;

  constructor(
    private readonly fifo: PeerFifo,
    private readonly makeOutput: () => Writable,
    private readonly continuous: boolean,
    private readonly log: Logger,
    private readonly end: (error: unknown) => void,
  ) {
    this.open();
  }

  stop(): void {
    this.stopped = true;
    this.current?.destroy();
    this.current = undefined;
  }

  /** Resolves once what was copied so far has reached the output. */
  flushed(): Promise<void> {
    const output = this.made;
    if (!output || this.ended || output.writableEnded) return Promise.resolve();
    return new Promise((resolve) => output.write(Buffer.alloc(0), () => resolve()));
  }

  private get output(): Writable {
    return (this.made ??= this.makeOutput());
  }

  private reopen(): void {
    if (this.stopped) return;
    try {
      this.open();
    } catch (error) {
      this.log.error(endOfSession(this.fifo, error));
      this.end(error);
    }
  }

  private open(): void {
    const socket = openFifoReader(this.fifo);
    this.current = socket;
    socket.on('data', (chunk: Buffer) => {
      if (!this.output.write(chunk)) {
        socket.pause();
        this.output.once('drain', () => socket.resume());
      }
    });
    socket.once('end', () => {
      if (this.current !== socket) return;
      if (this.continuous) {
        this.log.info(`${this.fifo.path}: end of stream`);
        this.ended = true;
        this.current = undefined;
        endOutput(this.output, this.log);
      } else {
        // The new reader opens before the old one closes, so the FIFO never lacks a reader and
        // a writer that came meanwhile loses nothing.
        this.reopen();
      }
      socket.destroy();
    });
    socket.on('error', (error) => {
      if (this.current !== socket) return;
      this.log.error(`${this.fifo.path}: ${reason(error)}`);
      this.current = undefined;
      socket.destroy();
      if (!this.continuous) setTimeout(() => this.current === undefined && !this.ended && this.reopen(), 100).unref();
    });
  }
}

/** Half-closes the output, so the peer sees the end of the stream; stdout may refuse (a FIFO). */
function endOutput(output: Writable, log: Logger): void {
  output.once('error', (error) => log.warning(`cannot end the output: ${reason(error)}`));
  output.end();
}
