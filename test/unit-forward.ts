// forward() and unforward() (src/core/forward.ts), which stand in for Readable.pipe() in every
// session, over real streams: what arrives, in what order, how much waits in the writer when it is
// slow, when the writer is ended, and what unforward() leaves behind. The listeners are shared by
// all forwardings, so two at once must not cross.
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { forward, unforward } from '../src/core/forward.js';
import { withDeadline } from './lib/limits-faults.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Every wait in this file is bounded by this: a test that would hang fails instead. */
const DEADLINE_MS = 2_000;

/** Resolves with `promise`, or rejects after DEADLINE_MS saying what did not happen. */
function within<T>(promise: Promise<T>, what: string): Promise<T> {
  return withDeadline(promise, DEADLINE_MS, what);
}

/** Resolves once `condition` holds; rejects after DEADLINE_MS. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${DEADLINE_MS} ms`);
    await sleep(1);
  }
}

/** A few turns of the event loop: room for whatever a wrong forward() would still do. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/**
 * A Writable that completes a write at once (on the next turn) while open, and only when the test
 * calls release() while held: the test decides when it drains. It counts the calls a forwarding
 * makes to write() and end(), and keeps what it took in.
 */
class Gated extends Writable {
  readonly chunks: Buffer[] = [];
  readonly errors: Error[] = [];
  writeCalls = 0;
  endCalls = 0;
  private writtenBytes = 0;
  private open: boolean;
  private held: Array<() => void> = [];

  constructor(highWaterMark: number, open = true) {
    super({ highWaterMark });
    this.open = open;
    this.on('error', (error) => this.errors.push(error));
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.chunks.push(chunk);
    if (this.open) setImmediate(callback);
    else this.held.push(() => callback());
  }

  override write(...args: unknown[]): boolean {
    this.writeCalls++;
    const chunk = args[0];
    this.writtenBytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : (chunk as Buffer).length;
    return (Writable.prototype.write as (...a: unknown[]) => boolean).apply(this, args);
  }

  override end(...args: unknown[]): this {
    this.endCalls++;
    (Writable.prototype.end as (...a: unknown[]) => unknown).apply(this, args);
    return this;
  }

  /** From now on writes complete; the one held completes now. */
  release(): void {
    this.open = true;
    for (const callback of this.held.splice(0)) callback();
  }

  /** What _write has been given, in order. */
  received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Bytes given to write() so far. */
  accepted(): number {
    return this.writtenBytes;
  }
}

/** `data` cut into chunks of `size` (the last one shorter), written into a new PassThrough, ended or not. */
function readerOf(data: Buffer, size: number, end = true): PassThrough {
  const reader = new PassThrough();
  for (let at = 0; at < data.length; at += size) reader.write(data.subarray(at, at + size));
  if (end) reader.end();
  return reader;
}

t.test('bytes arrive complete and in order: 1 MiB in chunks of many sizes', async (t) => {
  const data = randomBytes(MiB);
  const reader = new PassThrough();
  // Sizes that do not divide anything evenly, from 1 byte to 40 KiB.
  const sizes = [1, 7, 512, 4096, 1500, 40 * KiB, 3, 16 * KiB + 1];
  let chunks = 0;
  for (let at = 0; at < data.length; chunks++) {
    const size = sizes[chunks % sizes.length]!;
    reader.write(data.subarray(at, at + size));
    at += size;
  }
  reader.end();
  const writer = new Gated(8 * KiB);
  forward(reader, writer, true);
  await within(once(writer, 'finish'), 'the writer finishing');
  const received = writer.received();
  t.equal(received.length, data.length, 'every byte arrives');
  t.ok(received.equals(data), 'in order');
  t.ok(writer.writeCalls >= chunks, `one write per chunk at least (${writer.writeCalls} for ${chunks})`);
  // Its last write may have been refused as the reader ended: an ending Writable emits no 'drain',
  // so the end takes forward()'s listener off.
  t.same(writer.errors, [], 'no error');
  t.equal(writer.listenerCount('drain'), 0, 'no drain listener is left behind');
});

t.test('backpressure: the reader waits while the writer is full, and resumes when it drains', async (t) => {
  const chunk = KiB;
  const highWaterMark = 4 * KiB;
  const data = randomBytes(256 * KiB);
  const reader = readerOf(data, chunk);
  const writer = new Gated(highWaterMark, false);
  forward(reader, writer, true);

  await until(() => writer.writableNeedDrain && reader.isPaused(), 'the reader pausing for a full writer');
  t.equal(reader.readableFlowing, false, 'the reader is paused (readableFlowing false)');
  t.ok(writer.writableLength <= highWaterMark + chunk, `at most one chunk beyond the writer's highWaterMark waits in it (${writer.writableLength})`);
  t.equal(writer.listenerCount('drain'), 1, 'one drain listener');
  const acceptedAtPause = writer.accepted();
  t.ok(acceptedAtPause < data.length, 'most of the data is still in the reader');

  // Left alone, nothing more is read.
  await settle();
  await sleep(20);
  t.ok(reader.isPaused(), 'the reader stays paused while the writer does not drain');
  t.equal(writer.accepted(), acceptedAtPause, 'the writer is given nothing more');
  t.notOk(writer.writableEnded, 'and is not ended while data is waiting');

  writer.release();
  await within(once(writer, 'finish'), 'the writer finishing once released');
  t.ok(writer.received().equals(data), 'after the drain everything arrives, in order');
  // Its last write may have been refused as the reader ended: an ending Writable emits no 'drain',
  // so the end takes forward()'s listener off.
  t.equal(writer.listenerCount('drain'), 0, 'no drain listener is left');
  t.same(writer.errors, [], 'no error');
});

t.test('backpressure with the reader paused and resumed repeatedly while the writer stays full', async (t) => {
  // Several chunks reach onData while write() returns false (here the reader is resumed by someone
  // else each time, as a session does when it drains a stream): one drain listener, not one each.
  const chunk = KiB;
  const highWaterMark = 2 * KiB;
  const data = randomBytes(64 * KiB);
  const reader = readerOf(data, chunk);
  const writer = new Gated(highWaterMark, false);
  forward(reader, writer, true);
  await until(() => writer.writableNeedDrain && reader.isPaused(), 'the reader pausing for a full writer');
  t.equal(writer.listenerCount('drain'), 1, 'one drain listener at the first pause');

  for (let i = 1; i <= 4; i++) {
    const before = writer.accepted();
    reader.resume();
    await until(() => writer.accepted() > before && reader.isPaused(), `chunk ${i} more, and the reader pausing again`);
    t.equal(writer.accepted(), before + chunk, `resumed ${i}: one more chunk is written, refused again (write() false), and the reader paused again`);
    t.ok(writer.listenerCount('drain') <= 1, `resumed ${i}: still one drain listener (${writer.listenerCount('drain')})`);
  }

  writer.release();
  await within(once(writer, 'finish'), 'the writer finishing once released');
  t.ok(writer.received().equals(data), 'everything arrives once, in order');
  t.equal(writer.listenerCount('drain'), 0, 'no drain listener is left behind');
});

t.test('end=true: the writer ends when the reader ends', async (t) => {
  const reader = new PassThrough();
  const writer = new Gated(16 * KiB);
  forward(reader, writer, true);
  reader.write('before ');
  await settle();
  t.notOk(writer.writableEnded, 'not before the reader ends');
  reader.end('the end');
  await within(once(writer, 'finish'), 'the writer finishing');
  t.equal(writer.received().toString(), 'before the end', 'with all that was read');
  t.equal(writer.endCalls, 1, 'ended once');
});

t.test('end=true with a reader that had already ended: the writer ends too', async (t) => {
  const reader = new PassThrough();
  reader.end();
  reader.resume();
  await within(once(reader, 'end'), 'the reader ending');
  t.ok(reader.readableEnded, 'the reader has ended before forward()');
  const writer = new Gated(16 * KiB);
  forward(reader, writer, true);
  await within(once(writer, 'finish'), 'the writer finishing');
  t.equal(writer.endCalls, 1, 'ended once');
  t.equal(writer.writeCalls, 0, 'with nothing written');
});

t.test('an ended reader forwarded elsewhere in the same tick, without the end, ends neither writer', async (t) => {
  const reader = new PassThrough();
  reader.end();
  reader.resume();
  await within(once(reader, 'end'), 'the reader ending');
  const first = new Gated(16 * KiB);
  const second = new Gated(16 * KiB);
  forward(reader, first, true);
  unforward(reader);
  forward(reader, second, false);
  await settle();
  t.notOk(first.writableEnded, 'the writer it was taken from is not ended');
  t.notOk(second.writableEnded, 'the writer forwarded to without the end is not ended');
});

t.test('end=false: the writer stays open after the reader ends', async (t) => {
  const reader = new PassThrough();
  const writer = new Gated(16 * KiB);
  forward(reader, writer, false);
  reader.end('all of it');
  await within(once(reader, 'end'), 'the reader ending');
  await settle();
  t.equal(writer.received().toString(), 'all of it', 'what was read arrives');
  t.notOk(writer.writableEnded, 'the writer is not ended');
  t.equal(writer.endCalls, 0, 'end() was not called');
  writer.write(' and more');
  writer.end();
  await within(once(writer, 'finish'), 'the writer finishing');
  t.equal(writer.received().toString(), 'all of it and more', 'and its owner can still write to it');

  // Also with a reader that had already ended.
  const ended = new PassThrough();
  ended.end();
  ended.resume();
  await within(once(ended, 'end'), 'the second reader ending');
  const open = new Gated(16 * KiB);
  forward(ended, open, false);
  await settle();
  t.notOk(open.writableEnded, 'an already-ended reader does not end the writer either');
});

t.test('unforward(): nothing more passes, the reader is paused, and no listener is left', async (t) => {
  const reader = new PassThrough();
  const writer = new Gated(16 * KiB);
  const dataListeners = reader.listenerCount('data');
  const endListeners = reader.listenerCount('end');
  forward(reader, writer, true);
  t.ok(reader.listenerCount('data') > dataListeners, 'forward() listens for data');
  t.ok(reader.listenerCount('end') > endListeners, 'and, with end=true, for the end');
  reader.write('first');
  await until(() => writer.received().length === 5, 'the first chunk arriving');

  unforward(reader);
  t.equal(reader.listenerCount('data'), dataListeners, "the reader's data listeners are as before forward()");
  t.equal(reader.listenerCount('end'), endListeners, 'so are its end listeners');
  t.equal(writer.listenerCount('drain'), 0, 'the writer has no drain listener');
  t.ok(reader.isPaused(), 'the reader is paused');
  t.equal(reader.readableFlowing, false, 'readableFlowing is false');

  reader.end('second');
  await settle();
  t.equal(writer.received().toString(), 'first', 'what the reader reads next does not pass');
  t.equal(writer.writeCalls, 1, 'the writer gets no write');
  t.notOk(writer.writableEnded, 'and is not ended by the reader ending');
  t.equal(reader.readableLength, 6, 'the reader keeps what it read');

  // As after unpipe(), what waits goes to the next stream forwarded to.
  const next = new Gated(16 * KiB);
  forward(reader, next, true);
  await within(once(next, 'finish'), 'the next writer finishing');
  t.equal(next.received().toString(), 'second', 'the next writer gets what waited');
  t.equal(writer.received().toString(), 'first', 'the first writer still only what came before');
});

t.test('unforward() while the writer is full: the drain does not resume the reader', async (t) => {
  const data = randomBytes(64 * KiB);
  const reader = readerOf(data, KiB);
  const writer = new Gated(2 * KiB, false);
  forward(reader, writer, true);
  await until(() => writer.writableNeedDrain && reader.isPaused(), 'the reader pausing for a full writer');
  t.equal(writer.listenerCount('drain'), 1, 'waiting for the drain');
  const accepted = writer.accepted();

  unforward(reader);
  t.equal(writer.listenerCount('drain'), 0, 'unforward() removes the drain listener');
  writer.release();
  await within(once(writer, 'drain'), 'the writer draining');
  await settle();
  t.ok(reader.isPaused(), 'the reader stays paused after the drain');
  t.equal(writer.accepted(), accepted, 'the writer gets nothing more');
  t.notOk(writer.writableEnded, 'and is not ended');
  t.ok(reader.readableLength > 0, 'the rest waits in the reader');
});

t.test('unforward() on a stream never forwarded does nothing', async (t) => {
  const fresh = new PassThrough();
  unforward(fresh);
  t.equal(fresh.readableFlowing, null, 'a fresh stream is left as it was (readableFlowing null)');
  t.equal(fresh.listenerCount('data'), 0, 'with no listener');

  const flowing = new PassThrough();
  const seen: string[] = [];
  flowing.on('data', (chunk: Buffer) => seen.push(chunk.toString()));
  const listeners = { data: flowing.listenerCount('data'), end: flowing.listenerCount('end') };
  unforward(flowing);
  t.equal(flowing.readableFlowing, true, 'a flowing stream keeps flowing');
  t.same({ data: flowing.listenerCount('data'), end: flowing.listenerCount('end') }, listeners, 'its listeners are untouched');
  flowing.end('still read');
  await within(once(flowing, 'end'), 'the stream ending');
  t.same(seen, ['still read'], 'and its data still reaches its own listener');

  // Twice after one forward(): the second is a no-op too.
  const reader = new PassThrough();
  const writer = new Gated(16 * KiB);
  forward(reader, writer, false);
  unforward(reader);
  t.doesNotThrow(() => unforward(reader), 'unforward() twice');
  t.equal(reader.listenerCount('data'), 0, 'no data listener');
});

t.test('a destroyed writer gets no write, and the reader is not left stuck', async (t) => {
  const writer = new Gated(KiB);
  writer.destroy();
  const reader = readerOf(randomBytes(64 * KiB), KiB);
  forward(reader, writer, true);
  await within(once(reader, 'end'), 'the reader being read to its end');
  await settle();
  t.equal(writer.writeCalls, 0, 'no write()');
  t.equal(writer.endCalls, 0, 'no end()');
  t.same(writer.errors, [], 'no error event');

  // Destroyed while the forwarding runs.
  const reader2 = new PassThrough();
  const writer2 = new Gated(16 * KiB);
  forward(reader2, writer2, true);
  reader2.write('before');
  await until(() => writer2.received().length === 6, 'the first chunk arriving');
  writer2.destroy();
  await within(once(writer2, 'close'), 'the writer closing');
  const writes = writer2.writeCalls;
  reader2.write('after');
  reader2.end('the end');
  await within(once(reader2, 'end'), 'the reader being read to its end');
  await settle();
  t.equal(writer2.writeCalls, writes, 'no write() after the destroy');
  t.equal(writer2.endCalls, 0, 'no end()');
  t.same(writer2.errors, [], 'no error event');
});

t.test('an ended writer gets no write (no ERR_STREAM_WRITE_AFTER_END)', async (t) => {
  // Ended but not finished: its last write is still held, so it is neither finished nor destroyed.
  const writer = new Gated(16 * KiB, false);
  writer.write('last');
  writer.end();
  t.ok(writer.writableEnded && !writer.writableFinished && !writer.destroyed, 'the writer is ended, not yet finished');
  const reader = readerOf(randomBytes(16 * KiB), KiB);
  forward(reader, writer, true);
  await within(once(reader, 'end'), 'the reader being read to its end');
  await settle();
  t.equal(writer.writeCalls, 1, 'no write() besides its own');
  t.equal(writer.endCalls, 1, 'no end() besides its own');
  t.same(writer.errors, [], 'no error event');
  writer.release();
  await within(once(writer, 'finish'), 'the writer finishing');
  t.equal(writer.received().toString(), 'last', 'it finishes with only its own data');
});

t.test('two forwardings at once do not cross, one stalled and one flowing', async (t) => {
  const data1 = randomBytes(128 * KiB);
  const data2 = randomBytes(128 * KiB);
  const reader1 = new PassThrough();
  const reader2 = new PassThrough();
  // Interleaved: the readers' chunks are made in alternation.
  for (let at = 0; at < data1.length; at += KiB) {
    reader1.write(data1.subarray(at, at + KiB));
    reader2.write(data2.subarray(at, at + KiB));
  }
  reader1.end();
  reader2.end();
  const writer1 = new Gated(2 * KiB, false);
  const writer2 = new Gated(2 * KiB);
  forward(reader1, writer1, true);
  forward(reader2, writer2, true);

  await within(once(writer2, 'finish'), 'the flowing writer finishing');
  t.ok(writer2.received().equals(data2), "the flowing writer gets its reader's bytes, and only those");
  t.ok(reader1.isPaused(), "the stalled reader stays paused: the flowing writer's drains did not resume it");
  t.notOk(writer1.writableEnded, "and the flowing reader's end did not end the stalled writer");
  t.equal(writer1.listenerCount('drain'), 1, 'the stalled writer waits for its drain');

  writer1.release();
  await within(once(writer1, 'finish'), 'the stalled writer finishing once released');
  t.ok(writer1.received().equals(data1), "the stalled writer gets its reader's bytes, and only those");
  t.ok(writer1.listenerCount('drain') === 0 && writer2.listenerCount('drain') === 0, 'no drain listener is left on either');
});

t.test('twenty forwardings at once, with backpressure in each, do not cross', async (t) => {
  const pairs = Array.from({ length: 20 }, (_, i) => {
    const data = randomBytes(32 * KiB + i * 100);
    return { data, reader: new PassThrough(), writer: new Gated(KiB + i * 64) };
  });
  for (const { reader, writer } of pairs) forward(reader, writer, true);
  // Chunks of differing sizes, handed to the readers in rotation.
  const offsets = pairs.map(() => 0);
  for (let round = 0, left = pairs.length; left > 0; round++) {
    left = 0;
    pairs.forEach(({ data, reader }, i) => {
      if (offsets[i]! >= data.length) return;
      const size = 200 + ((round * 37 + i * 101) % 1800);
      reader.write(data.subarray(offsets[i], offsets[i]! + size));
      offsets[i]! += size;
      if (offsets[i]! >= data.length) reader.end();
      else left++;
    });
  }
  await within(Promise.all(pairs.map(({ writer }) => once(writer, 'finish'))), 'all writers finishing');
  pairs.forEach(({ data, writer }, i) => t.ok(writer.received().equals(data), `writer ${i} gets exactly its reader's bytes`));
  t.ok(
    pairs.every(({ writer }) => writer.listenerCount('drain') === 0),
    'no drain listener is left on any writer',
  );
});

/** A TCP connection on loopback: the accepted socket and the client's; both ends half-open. */
async function socketPair(t: Test): Promise<{ accepted: Socket; client: Socket }> {
  const server = createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => void server.close());
  const accepting = once(server, 'connection') as Promise<[Socket]>;
  const client = createConnection({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const [accepted] = await within(accepting, 'the connection being accepted');
  await within(once(client, 'connect'), 'the client connecting');
  t.teardown(() => {
    client.destroy();
    accepted.destroy();
  });
  return { accepted, client };
}

t.test('over TCP on loopback: a paused socket, a bounded writer, then everything in both directions', async (t) => {
  const { accepted, client } = await socketPair(t);
  const highWaterMark = 16 * KiB;

  // Socket to a slow writer.
  const inbound = randomBytes(2 * MiB);
  const writer = new Gated(highWaterMark, false);
  forward(accepted, writer, true);
  client.end(inbound);
  await until(() => writer.writableNeedDrain && accepted.isPaused(), 'the socket pausing for a full writer');
  // Node reads at most 64 KiB from a socket at a time: one such chunk beyond the mark at most.
  t.ok(writer.writableLength <= highWaterMark + 64 * KiB, `a bounded amount waits in the writer (${writer.writableLength})`);
  t.ok(writer.accepted() < inbound.length, 'the rest waits in the socket and the kernel');
  writer.release();
  await within(once(writer, 'finish'), 'the writer finishing once released, as the client ended');
  t.ok(writer.received().equals(inbound), 'every byte arrives in order');

  // Stream to the socket: the client reads it all, then sees the end.
  const outbound = randomBytes(MiB);
  const reader = readerOf(outbound, 8 * KiB);
  const got: Buffer[] = [];
  client.on('data', (chunk: Buffer) => got.push(chunk));
  forward(reader, accepted, true);
  await within(once(client, 'end'), 'the client seeing the end');
  t.ok(Buffer.concat(got).equals(outbound), 'the client gets every byte in order');
  t.equal(accepted.listenerCount('drain'), 0, 'no drain listener is left on the socket');
});
