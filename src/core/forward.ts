import type { Readable, Writable } from 'node:stream';

/**
 * Readable.pipe() for a session's two directions, without its cost per idle peer: pipe() makes
 * nine closures and a context for every pair, two pairs a peer. Here every listener is one of
 * the functions below, shared by all sessions, and finds its streams through these properties.
 */
const target = Symbol('forwarded to');
const source = Symbol('forwarded from');

type From = Readable & { [target]?: To };
type To = Writable & { [source]?: From };

/**
 * Writes what `from` reads into `to`, reading no faster than `to` takes it; with `end`, `to` ends
 * when `from` does. A stream forwards to one stream at most, and is forwarded to from one.
 */
export function forward(from: Readable, to: Writable, end: boolean): void {
  const reader = from as From;
  const writer = to as To;
  reader[target] = writer;
  writer[source] = reader;
  reader.on('data', onData);
  if (end) {
    if (reader.readableEnded) process.nextTick(endLate, reader, writer);
    else reader.on('end', onEnd);
  }
  reader.resume();
}

/** Stops forwarding from `from` and pauses it, as unpipe() does: what it reads next waits. */
export function unforward(from: Readable): void {
  const reader = from as From;
  const writer = reader[target];
  if (!writer) return;
  reader[target] = undefined;
  writer[source] = undefined;
  reader.off('data', onData);
  reader.off('end', onEnd);
  writer.off('drain', onDrain);
  reader.pause();
}

function onData(this: From, chunk: Buffer): void {
  const writer = this[target];
  if (!writer || writer.destroyed || writer.writableEnded) return;
  if (!writer.write(chunk)) {
    this.pause();
    writer.off('drain', onDrain); // once, however many chunks came before the pause took hold
    writer.on('drain', onDrain);
  }
}

function onDrain(this: To): void {
  this.off('drain', onDrain);
  const reader = this[source];
  if (reader?.[target] === this) reader.resume();
}

/**
 * Listened to only when forwarding with `end`. Nothing more will be read, so a drain the writer
 * owes no longer matters (and an ending writer emits none): its listener goes too.
 */
function onEnd(this: From): void {
  const writer = this[target];
  if (!writer) return;
  writer.off('drain', onDrain);
  if (!writer.writableEnded && !writer.destroyed) writer.end();
}

/**
 * The end of a reader that had ended before forward(): by the next tick it may forward elsewhere,
 * perhaps without the end, so only the writer it was forwarded to with the end is ended.
 */
function endLate(reader: From, writer: To): void {
  if (reader[target] === writer) onEnd.call(reader);
}
