import type { Readable } from 'node:stream';

export type InputLine = { line: string } | { tooLong: number };

/**
 * Splits a stream into lines, yielding an over-long line as its length only, so that one huge line
 * costs at most `maxLength` bytes of memory and is reported rather than silently dropped.
 * Consumed with `for await`, it reads no further than the consumer has got to.
 */
export async function* readLines(input: Readable, maxLength: number): AsyncGenerator<InputLine> {
  let pending: Buffer[] = [];
  let pendingLength = 0;
  let skipped = 0; // bytes of the current over-long line seen so far
  for await (const chunk of input as AsyncIterable<Buffer | string>) {
    let data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    for (let newline = data.indexOf(10); newline !== -1; newline = data.indexOf(10)) {
      const head = data.subarray(0, newline);
      data = data.subarray(newline + 1);
      if (skipped > 0 || pendingLength + head.length > maxLength) {
        yield { tooLong: skipped + pendingLength + head.length };
      } else {
        yield { line: Buffer.concat([...pending, head]).toString('utf8').replace(/\r$/, '') };
      }
      pending = [];
      pendingLength = 0;
      skipped = 0;
    }
    if (skipped > 0 || pendingLength + data.length > maxLength) {
      skipped += pendingLength + data.length;
      pending = [];
      pendingLength = 0;
    } else if (data.length > 0) {
      pending.push(data);
      pendingLength += data.length;
    }
  }
  if (skipped > 0) yield { tooLong: skipped };
  else if (pendingLength > 0) yield { line: Buffer.concat(pending).toString('utf8').replace(/\r$/, '') };
}
