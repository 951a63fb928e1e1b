import type { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import type { Logger } from '../logger.js';
import { reason } from '../reason.js';
import { prepareFifoDir } from './fifo-dir.js';
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
  output: Writable;
}

/**
 * Copies `input` to the `out` FIFO and the `in` FIFO to `output` until `input` ends; resolves with
 * the exit status. In message mode each chunk of input is one message: `out` is opened for it and
 * closed after it, and `in` is reopened whenever its writers have all closed. In continuous mode
 * `out` is opened once and kept, and the end of `in` ends `output`.
 */
export async function std2fifo(options: Std2fifoOptions): Promise<number> {
  const { log, output } = options;
  const paths = prepareFifoDir(options.root, options.name);
  const inbound = new Inbound(paths.in, output, options.continuous, log);
  let writer: Socket | undefined;
  let status = 0;
  try {
    for await (const chunk of options.input as AsyncIterable<Buffer>) {
      if (options.continuous) {
        writer ??= await openFifoWriter(paths.out);
        await writeChunk(writer, chunk);
        continue;
      }
      const message = await openFifoWriter(paths.out);
      try {
        await writeChunk(message, chunk);
      } catch (error) {
        log.warning(`${paths.out}: ${reason(error)}; a message of ${chunk.length} bytes was not delivered`);
      } finally {
        message.destroy();
      }
    }
  } catch (error) {
    log.error(`${paths.out}: ${reason(error)}`);
    status = 1;
  } finally {
    writer?.destroy();
    inbound.stop();
  }
  await inbound.flushed();
  return status;
}

/** The `in` FIFO to `output`, with backpressure, reopened after each end in message mode. */
class Inbound {
  private current: Socket | undefined;
  private ended = false;

  constructor(
    private readonly path: string,
    private readonly output: Writable,
    private readonly continuous: boolean,
    private readonly log: Logger,
  ) {
    this.open();
  }

  stop(): void {
    this.current?.destroy();
    this.current = undefined;
  }

  /** Resolves once what was copied so far has reached the output. */
  flushed(): Promise<void> {
    if (this.ended || this.output.writableEnded) return Promise.resolve();
    return new Promise((resolve) => this.output.write(Buffer.alloc(0), () => resolve()));
  }

  private open(): void {
    const socket = openFifoReader(this.path);
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
        this.log.info(`${this.path}: end of stream`);
        this.ended = true;
        this.current = undefined;
        endOutput(this.output, this.log);
      } else {
        // The new reader opens before the old one closes, so the FIFO never lacks a reader and
        // a writer that came meanwhile loses nothing.
        this.open();
      }
      socket.destroy();
    });
    socket.on('error', (error) => {
      if (this.current !== socket) return;
      this.log.error(`${this.path}: ${reason(error)}`);
      this.current = undefined;
      socket.destroy();
      if (!this.continuous) setTimeout(() => this.current === undefined && !this.ended && this.open(), 100).unref();
    });
  }
}

/** Half-closes the output, so the peer sees the end of the stream; stdout may refuse (a FIFO). */
function endOutput(output: Writable, log: Logger): void {
  output.once('error', (error) => log.warning(`cannot end the output: ${reason(error)}`));
  output.end();
}
