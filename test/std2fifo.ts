import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { eventually } from './lib/eventually.js';
import { tempDir } from './lib/identity.js';
import { readsExtraCertsAtStartup } from './lib/node-startup.js';
import { runProgram } from './lib/run.js';
import { appears, shell, startStd2fifo, watchOutput, type Running } from './lib/std2fifo.js';
import { bundle, installedPrograms, type Teardown } from './lib/tlsd.js';

const root = tempDir('std2fifo-test-');
const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');
let names = 0;
const freshName = (): string => `peer${++names}`;

/**
 * A reader of `out` as std2fifo(1) asks message-mode readers to be, like the IM client: each
 * message ends with std2fifo's close, and the next reader is opened before the old one is dropped,
 * so a message written meanwhile is never left without a reader. It prints the messages on stdout
 * and the count of ends seen so far on stderr.
 */
function messageReader(t: Teardown, path: string): Running {
  const script = `
    const { openSync, constants } = require('node:fs');
    const { Socket } = require('node:net');
    let ends = 0;
    const open = () => {
      const socket = new Socket({ fd: openSync(process.argv[1], constants.O_RDONLY | constants.O_NONBLOCK), readable: true, writable: false });
      socket.on('data', (chunk) => process.stdout.write(chunk));
      socket.once('end', () => { ends++; process.stderr.write(ends + '\\n'); open(); socket.destroy(); });
    };
    open();`;
  const proc = spawn(process.execPath, ['-e', script, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void proc.kill('SIGKILL'));
  return watchOutput(proc);
}

t.test('message mode: the directory, the FIFOs and their modes', async (t) => {
  const name = freshName();
  const s2f = startStd2fifo(t, [root], { SHA256: name });
  const dir = join(root, name);
  await appears(join(dir, 'out'));
  t.equal(statSync(dir).mode & 0o777, 0o770);
  t.ok(statSync(join(dir, 'in')).isFIFO());
  t.equal(statSync(join(dir, 'in')).mode & 0o777, 0o620);
  t.ok(statSync(join(dir, 'out')).isFIFO());
  t.equal(statSync(join(dir, 'out')).mode & 0o777, 0o640);
  s2f.proc.stdin?.end();
  t.equal(await s2f.exited, 0, 'EOF on stdin: exit 0');
  const again = startStd2fifo(t, [root], { SHA256: name });
  again.proc.stdin?.end();
  t.equal(await again.exited, 0, 'existing directory and FIFOs are reused');
});

t.test('message mode: each message opens and closes out; in is reopened after each writer', async (t) => {
  const name = freshName();
  const dir = join(root, name);
  const s2f = startStd2fifo(t, ['-e', root], { SHA256: name });
  s2f.proc.stdin?.write('first message\n');
  await appears(join(dir, 'out'));
  const first = shell(t, 'cat "$1"', join(dir, 'out'));
  t.equal(await first.exited, 0, 'the reader sees the end of the first message');
  t.equal(first.stdout().toString(), 'first message\n');
  s2f.proc.stdin?.write('second message\n');
  const second = shell(t, 'cat "$1"', join(dir, 'out'));
  t.equal(await second.exited, 0);
  t.equal(second.stdout().toString(), 'second message\n');

  const writers = shell(t, 'for i in 1 2 3 4 5; do echo "line $i" > "$1" || exit 1; done', join(dir, 'in'));
  t.equal(await writers.exited, 0, 'five writers, one after another, each open in');
  t.equal((await s2f.stdoutLength(35)).toString(), 'line 1\nline 2\nline 3\nline 4\nline 5\n');
  s2f.proc.stdin?.end();
  t.equal(await s2f.exited, 0);
});

t.test('message mode: many messages and writers, nothing lost or reordered', async (t) => {
  const name = freshName();
  const dir = join(root, name);
  const s2f = startStd2fifo(t, [root], { SHA256: name });
  await appears(join(dir, 'out'));
  const reader = messageReader(t, join(dir, 'out'));
  const sent: string[] = [];
  for (let i = 0; i < 100; i++) {
    const message = `message ${i} ${'x'.repeat(i * 37)}\n`;
    sent.push(message);
    s2f.proc.stdin?.write(message);
    if (i === 0) {
      await reader.stdoutLength(message.length);
      t.ok(await eventually(() => reader.stderr().startsWith('1\n'), 10_000), 'the reader sees the end of the first message');
    }
    if (i % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const expected = sent.join('');
  t.equal((await reader.stdoutLength(expected.length)).toString(), expected, 'every message, in order');
  const inbound = Array.from({ length: 50 }, (_, i) => `in ${i}\n`).join('');
  const writers = shell(t, 'i=0; while [ $i -lt 50 ]; do echo "in $i" > "$1" || exit 1; i=$((i+1)); done', join(dir, 'in'));
  t.equal(await writers.exited, 0);
  t.equal((await s2f.stdoutLength(inbound.length)).toString(), inbound);
  s2f.proc.stdin?.end();
  t.equal(await s2f.exited, 0);
  reader.proc.kill('SIGKILL');
});

t.test('continuous mode (-c): 1 MiB each way, intact', async (t) => {
  const name = freshName();
  const dir = join(root, name);
  const toPeer = randomBytes(1 << 20);
  const fromPeer = randomBytes(1 << 20);
  const file = join(root, `${name}-in.bin`);
  writeFileSync(file, toPeer);
  const s2f = startStd2fifo(t, ['-c', '-e', root], { SHA256: name });
  await appears(join(dir, 'out'));
  const reader = shell(t, 'cat "$1" | sha256sum', join(dir, 'out'));
  const writer = shell(t, 'cat "$2" > "$1"', join(dir, 'in'), file);
  // stdin in many chunks: one stream on out, not one message each.
  for (let offset = 0; offset < fromPeer.length; offset += 64 * 1024) s2f.proc.stdin?.write(fromPeer.subarray(offset, offset + 64 * 1024));
  t.equal(await writer.exited, 0);
  t.equal(sha(await s2f.stdoutLength(toPeer.length, 30_000)), sha(toPeer), 'in → stdout intact');
  const stdout = s2f.proc.stdout!;
  if (!stdout.readableEnded) await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('stdout did not end after EOF on in')), 10_000);
    stdout.once('end', () => resolve(clearTimeout(timer)));
  });
  t.equal(s2f.stdout().length, toPeer.length, 'EOF on in ends stdout, nothing more');
  s2f.proc.stdin?.end();
  t.equal(await s2f.exited, 0);
  t.equal(await reader.exited, 0);
  t.equal(reader.stdout().toString().split(' ')[0], sha(fromPeer), 'stdin → out intact, out closed at EOF');
});

t.test('as installed (bin/std2fifo through a symlink): runs, and Node starts without NODE_EXTRA_CA_CERTS', async (t) => {
  const installed = join(installedPrograms(join(root, 'installed')), 'std2fifo');
  const name = freshName();
  // Node 20 warns at start-up when the file cannot be read: the warning shows whether it looked.
  // Node 22 and 24 read it only once TLS is loaded, which std2fifo never does.
  const env = { SHA256: name, NODE_EXTRA_CA_CERTS: join(root, 'no-such-ca.pem') };
  const direct = await runProgram('std2fifo', [bundle('std2fifo'), root], { env, file: process.execPath });
  if (readsExtraCertsAtStartup) t.match(direct.stderr, /Ignoring extra certs/, 'node dist/std2fifo.cjs, without the launcher, reads NODE_EXTRA_CA_CERTS (the check below can fail)');
  else t.notMatch(direct.stderr, /Ignoring extra certs/, 'this Node reads NODE_EXTRA_CA_CERTS only for TLS, which std2fifo never loads');
  const viaLauncher = await runProgram('std2fifo', [root], { env, file: installed });
  t.equal(viaLauncher.status, 0, 'stdin at its end: done');
  t.equal(viaLauncher.stderr, '', 'no warning: Node did not read the file');
  t.ok(statSync(join(root, name, 'in')).isFIFO() && statSync(join(root, name, 'out')).isFIFO(), 'its FIFOs were made');
});

t.test('-v names the variable; unset or unsafe values are refused', async (t) => {
  const name = freshName();
  const s2f = startStd2fifo(t, ['-v', 'PEER', root], { PEER: name, SHA256: 'not-this' });
  await appears(join(root, name, 'out'));
  t.notOk(existsSync(join(root, 'not-this')));
  s2f.proc.stdin?.end();
  t.equal(await s2f.exited, 0);

  const unset = await runProgram('std2fifo', ['-v', 'NO_SUCH_VARIABLE_HERE', root], { input: '' });
  t.equal(unset.status, 1);
  t.match(unset.stderr, /NO_SUCH_VARIABLE_HERE is not set/);
  t.match(unset.stderr, /Usage: std2fifo/);

  const sandbox = join(root, 'sandbox');
  mkdirSync(join(sandbox, 'root'), { recursive: true });
  for (const value of ['', '.', '..', 'a/b', '../escape', '/abs']) {
    const result = await runProgram('std2fifo', ['-v', 'PEER', join(sandbox, 'root')], { env: { PEER: value }, input: 'data' });
    t.equal(result.status, 1, `PEER=${JSON.stringify(value)} refused`);
    t.match(result.stderr, /^std2fifo: unsafe directory name/m);
    t.notMatch(result.stderr, /at .*\.js/, 'no stack trace');
  }
  t.notOk(existsSync(join(sandbox, 'escape')), 'nothing made outside the root');
  const noRoot = await runProgram('std2fifo', [join(root, 'no-such-dir')], { env: { SHA256: 'x' }, input: '' });
  t.equal(noRoot.status, 1);
  t.match(noRoot.stderr, /^std2fifo: cannot create .*no-such-dir\/x: .*ENOENT/m);
});

t.test('no blocking opens: with one libuv worker, many pending FIFOs, everything still flows', async (t) => {
  // A blocking open of a FIFO would park a thread-pool worker; with UV_THREADPOOL_SIZE=1 the first
  // one would stall every later fs call. Each std2fifo here waits for an out reader that is not
  // there yet, and must still copy in → stdout at once, then deliver when a reader comes.
  const peers = Array.from({ length: 6 }, () => {
    const name = freshName();
    const s2f = startStd2fifo(t, [root], { SHA256: name, UV_THREADPOOL_SIZE: '1' });
    s2f.proc.stdin?.write(`pending for ${name}\n`);
    return { name, s2f, dir: join(root, name) };
  });
  const lags: number[] = [];
  const ticker = setInterval(
    (() => {
      let last = Date.now();
      return () => {
        const now = Date.now();
        lags.push(now - last - 20);
        last = now;
      };
    })(),
    20,
  );
  for (const peer of peers) await appears(join(peer.dir, 'out'));
  await new Promise((resolve) => setTimeout(resolve, 200)); // each now polls for an out reader
  for (const peer of peers) {
    // A thread blocked opening a FIFO sleeps in the kernel's wait_for_partner.
    const tasks = readdirSync(`/proc/${peer.s2f.proc.pid}/task`);
    const blocked = tasks.filter((task) => readFileSync(`/proc/${peer.s2f.proc.pid}/task/${task}/wchan`, 'utf8') === 'wait_for_partner');
    t.equal(blocked.length, 0, `${peer.name}: no thread of std2fifo is blocked opening a FIFO`);
  }
  for (const peer of peers) {
    const writer = shell(t, 'echo "hello $2" > "$1"', join(peer.dir, 'in'), peer.name);
    t.equal(await writer.exited, 0);
    t.equal((await peer.s2f.stdoutLength(`hello ${peer.name}\n`.length, 5000)).toString(), `hello ${peer.name}\n`, `${peer.name}: in → stdout while out waits`);
  }
  for (const peer of peers) {
    const reader = shell(t, 'cat "$1"', join(peer.dir, 'out'));
    t.equal(await reader.exited, 0);
    t.equal(reader.stdout().toString(), `pending for ${peer.name}\n`, `${peer.name}: the pending message arrives`);
    peer.s2f.proc.stdin?.end();
  }
  for (const peer of peers) t.equal(await peer.s2f.exited, 0);
  clearInterval(ticker);
  t.ok(Math.max(...lags) < 1000, `the test process stayed responsive (worst timer lag ${Math.max(...lags)} ms)`);
});
