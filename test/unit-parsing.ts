import { constants } from 'node:os';
import { Readable } from 'node:stream';
import t from 'tap';
import { takeActivatedSockets } from '../src/service/activation.js';
import { joinSplitTargets, parseDialLine } from '../src/input/dial-line.js';
import { fingerprint } from '../src/peer/fingerprint.js';
import { readLines, type InputLine } from '../src/input/line-reader.js';
import { PeerSlots } from '../src/core/peer-slots.js';
import { parseSignal } from '../src/os/signal-names.js';
import { reason, socketReason } from '../src/log/reason.js';

t.test('dial lines', async (t) => {
  t.same(parseDialLine('localhost 5600'), { target: { host: 'localhost', name: 'localhost', port: 5600 } });
  // The name as written is looked up (fully qualified stays so); SNI and checks get its one form.
  t.same(parseDialLine('  Example.COM.\t443 '), { target: { host: 'Example.COM.', name: 'example.com', port: 443 } });
  t.same(parseDialLine('::1 5600'), { target: { host: '::1', port: 5600 } });
  t.same(parseDialLine('[2001:db8::1] 80'), { target: { host: '2001:db8::1', port: 80 } });
  // An address with a trailing dot is that address: no host name, so no SNI (it was sent as one).
  t.same(parseDialLine('192.0.2.7. 443'), { target: { host: '192.0.2.7', port: 443 } });
  t.same(parseDialLine('10.0.0.1 1'), { target: { host: '10.0.0.1', port: 1 } });
  t.same(parseDialLine('abc.onion 18765'), { target: { host: 'abc.onion', name: 'abc.onion', port: 18765 } });
  t.same(parseDialLine(''), { blank: true });
  t.same(parseDialLine('   '), { blank: true });
  for (const bad of ['localhost', 'a b c', 'host 0', 'host 65536', 'host http', 'ho$t 80', '-x 80', 'a..b 80', '[::1 80']) {
    t.ok('error' in parseDialLine(bad), `${JSON.stringify(bad)} is an error`);
  }
});

t.test('dial lines with a fingerprint pin', async (t) => {
  const hex = 'ab'.repeat(32);
  t.same(parseDialLine(`localhost 5600 ${hex}`), { target: { host: 'localhost', name: 'localhost', port: 5600, pin: hex } });
  const openssl = hex.toUpperCase().match(/../g)!.join(':');
  t.same(parseDialLine(`::1 5600 ${openssl}`), { target: { host: '::1', port: 5600, pin: hex } });
  t.same(parseDialLine(`::1 5600 SHA256:${hex}`), { target: { host: '::1', port: 5600, pin: hex } });
  for (const bad of [`h 1 ${hex.slice(1)}`, `h 1 ${hex}0`, `h 1 ${'g'.repeat(64)}`, `h 1 ${hex} extra`]) {
    t.ok('error' in parseDialLine(bad), `${JSON.stringify(bad)} is an error`);
  }
});

t.test('signals by number or name', async (t) => {
  t.equal(parseSignal('15'), 'SIGTERM');
  t.equal(parseSignal('TERM'), 'SIGTERM');
  t.equal(parseSignal('SIGHUP'), 'SIGHUP');
  t.equal(parseSignal('usr1'), 'SIGUSR1');
  t.equal(parseSignal('9'), 'SIGKILL');
  t.equal(parseSignal('FOO'), undefined);
  t.equal(parseSignal('999'), undefined);
  t.equal(parseSignal(''), undefined);
});

t.test('fingerprint is lowercase hex SHA-256 of the DER', async (t) => {
  t.equal(fingerprint(Buffer.from('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
});

async function lines(chunks: string[], max: number): Promise<InputLine[]> {
  const out: InputLine[] = [];
  for await (const line of readLines(Readable.from(chunks.map((c) => Buffer.from(c))), max)) out.push(line);
  return out;
}

t.test('line reader splits across chunks and reports over-long lines', async (t) => {
  t.same(await lines(['a 1\nb', ' 2\r\n', 'c 3'], 100), [{ line: 'a 1' }, { line: 'b 2' }, { line: 'c 3' }]);
  t.same(await lines(['x'.repeat(30), 'y'.repeat(30), '\nok 1\n'], 50), [{ tooLong: 60 }, { line: 'ok 1' }]);
  t.same(await lines(['short\n', 'z'.repeat(200)], 50), [{ line: 'short' }, { tooLong: 200 }]);
  t.same(await lines(['\n\n'], 10), [{ line: '' }, { line: '' }]);
});

t.test("a host alone on its line takes its port from the next line that is not blank, as the original's scanf did", async (t) => {
  const joined = async (chunks: string[]): Promise<InputLine[]> => {
    const out: InputLine[] = [];
    for await (const line of joinSplitTargets(readLines(Readable.from(chunks.map((c) => Buffer.from(c))), 100))) out.push(line);
    return out;
  };
  // What the original's tests/authenticate.sh writes: `localhost ${PORT}`, PORT after two line breaks.
  t.same(await joined(['localhost \n\n5600\n']), [{ line: 'localhost 5600' }]);
  t.same(await joined(['example.org\n', '443 ' + 'ab'.repeat(32) + '\n']), [{ line: `example.org 443 ${'ab'.repeat(32)}` }]);
  // Each stands alone when what follows does not start with a port.
  t.same(await joined(['garbage\n', 'a b c d\n', 'host 80\n']), [{ line: 'garbage' }, { line: 'a b c d' }, { line: 'host 80' }]);
  t.same(await joined(['lonely\n', 'x'.repeat(120), '\n']), [{ line: 'lonely' }, { tooLong: 120 }]);
  t.same(await joined(['5600\n', 'host\n']), [{ line: '5600' }, { line: 'host' }], 'a port alone waits for nothing; a host at the end is read alone');
  t.same(await joined(['a 1\n', '\n', 'b 2\n']), [{ line: 'a 1' }, { line: '' }, { line: 'b 2' }], 'lines that need no joining are as they were');
});

t.test('peer slots: refuses at the limit, queued waiters get freed slots in order', async (t) => {
  const slots = new PeerSlots(2);
  t.ok(slots.tryAcquire());
  t.ok(slots.tryAcquire());
  t.notOk(slots.tryAcquire());
  const order: string[] = [];
  const first = slots.acquire().then((ok) => order.push(`first ${ok}`));
  const second = slots.acquire().then((ok) => order.push(`second ${ok}`));
  slots.release();
  await first;
  t.same(order, ['first true']);
  t.equal(slots.taken, 2, 'the slot passed to the waiter');
  slots.close();
  await second;
  t.same(order, ['first true', 'second false']);
});

t.test('reason gives one short line', async (t) => {
  const error = Object.assign(new Error("ENOENT: no such file or directory, open '/x'"), { code: 'ENOENT' });
  t.equal(reason(error), 'no such file or directory (ENOENT)');
  t.equal(reason('plain'), 'plain');
  const directory = Object.assign(new Error('EISDIR: illegal operation on a directory, read'), { code: 'EISDIR' });
  t.equal(reason(directory), 'illegal operation on a directory (EISDIR)');
  // The CLI runs our own wrapped line through reason() again: the code must survive.
  t.equal(reason(new Error(`Cannot read key file /tmp: ${reason(directory)}`)), 'Cannot read key file /tmp: illegal operation on a directory (EISDIR)');
  // Any call that names a path: std2fifo's words for its directory come from here too.
  const opendir = Object.assign(new Error("EACCES: permission denied, opendir '/x'"), { code: 'EACCES' });
  t.equal(reason(opendir), 'permission denied (EACCES)');
  // Where the address is in our own line, a socket's errno in the system's words, once.
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1080'), { code: 'ECONNREFUSED', errno: -constants.errno.ECONNREFUSED });
  t.equal(reason(refused), 'connect ECONNREFUSED 127.0.0.1:1080', 'a dial line names no more than Node does');
  t.equal(socketReason(refused), 'connection refused (ECONNREFUSED)');
});

t.test('socket activation reads LISTEN_FDS only when LISTEN_PID is ours, and removes the variables', async (t) => {
  const env: NodeJS.ProcessEnv = { LISTEN_PID: '4242', LISTEN_FDS: '2', LISTEN_FDNAMES: 'a:b', KEEP: 'x' };
  t.same(takeActivatedSockets(env, 4242), [3, 4]);
  t.same(env, { KEEP: 'x' }, 'children will not see them');
  const stale: NodeJS.ProcessEnv = { LISTEN_PID: '1', LISTEN_FDS: '1' };
  t.equal(takeActivatedSockets(stale, 4242), undefined, 'variables meant for another process');
  t.same(stale, {}, 'are removed all the same');
  t.equal(takeActivatedSockets({ LISTEN_PID: '7', LISTEN_FDS: '0' }, 7), undefined, 'no sockets');
  t.equal(takeActivatedSockets({ LISTEN_PID: '7', LISTEN_FDS: 'x' }, 7), undefined, 'garbage');
  t.equal(takeActivatedSockets({}, 7), undefined, 'not activated');
});
