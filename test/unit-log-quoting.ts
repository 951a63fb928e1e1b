import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import t from 'tap';
import { Logger, quote, quoteBytes } from '../src/log/logger.js';
import { tempDir } from './lib/identity.js';

t.test('quoting untrusted text and bytes for a log line', async (t) => {
  t.equal(quote('plain'), '"plain"');
  t.equal(quote('a"b\\c\nd\te\u0000'), '"a\\"b\\\\c\\nd\\te\\u0000"');
  t.equal(quote('del\u007f c1\u0085 rlo\u202e ls\u2028 tag\u{e0001}'), '"del\\u007f c1\\u0085 rlo\\u202e ls\\u2028 tag\\u{e0001}"');
  t.equal(quote('Zoë 日本'), '"Zoë 日本"', 'printable text as it is');
  t.equal(quote('x'.repeat(100), 10), `"${'x'.repeat(10)}…"`);
  t.equal(quoteBytes(Buffer.from('a\nX=1\tb')), '"a\\x0aX=1\\x09b"');
  t.equal(quoteBytes(Buffer.from([0x22, 0x5c, 0x7f, 0x80, 0xff, 0x00, 0x7e])), '"\\"\\\\\\x7f\\x80\\xff\\x00~"');
  t.equal(quoteBytes(Buffer.from('café')), '"caf\\xc3\\xa9"');
  t.equal(quoteBytes(Buffer.alloc(100, 0x61), 5), '"aaaaa"…');
});

t.test('a log line holds nothing unprintable, whatever its message carries', async (t) => {
  const written = await stderrWrites(async () => {
    const log = new Logger({ ident: 'test', stderr: true, syslogPath: join(tempDir(), 'no-syslog') });
    log.notice('one\r\ntwo\u001b[2J three\u202eevil \u0085four\u2028five');
    await nextTurn();
    log.close();
  });
  t.equal(written.join(''), 'test: one two\\u001b[2J three\\u202eevil \\u0085four\\u2028five\n');
});

t.test('lines of one turn share a write, never one larger than PIPE_BUF, and never split a line; a prefix leads each line', async (t) => {
  const lines = Array.from({ length: 200 }, (_, i) => `line ${i} ${'é'.repeat(40)}`);
  const written = await stderrWrites(async () => {
    const log = new Logger({ ident: 'test', stderr: true, syslogPath: join(tempDir(), 'no-syslog'), prefix: 'worker 2: ' });
    for (const line of lines) log.info(line);
    await nextTurn();
    log.close();
  });
  t.ok(written.length > 1 && written.length < lines.length, `200 lines in a few writes (${written.length})`);
  t.ok(written.every((chunk) => Buffer.byteLength(chunk) <= 4096), 'each write at most 4,096 bytes, as a pipe keeps it whole');
  t.ok(written.every((chunk) => chunk.endsWith('\n')), 'each write ends at the end of a line');
  t.same(written.join('').split('\n').slice(0, -1), lines.map((line) => `test: worker 2: ${line}`), 'every line, in order, after the prefix');
});

/** Each write to stderr while `run` runs, instead of writing it. */
async function stderrWrites(run: () => Promise<void>): Promise<string[]> {
  const written: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    written.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    await run();
  } finally {
    process.stderr.write = write;
  }
  return written;
}
