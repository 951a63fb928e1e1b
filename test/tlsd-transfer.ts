import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, openSync, closeSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TLSSocket } from 'node:tls';
import t from 'tap';
import { connectTls } from './lib/client.js';
import { clientExit, scratchDir, startClient } from './lib/external.js';
import { makeIdentity } from './lib/identity.js';
import { startTlsd } from './lib/tlsd.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const ids = scratchDir(t);
const server = makeIdentity(ids, 'server');
const alice = makeIdentity(ids, 'alice');
// Syslog is not what these tests look at: keep the messages on stderr only.
const quietSyslog = { TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log' };

interface Digest {
  bytes: number;
  sha256: string;
}

/** Random bytes made as they are sent, so 64 MiB never sit in memory at once. */
function* randomChunks(total: number, size = MiB): Generator<Buffer> {
  for (let left = total; left > 0; left -= size) yield randomBytes(Math.min(size, left));
}

/** The same buffer again and again: volume without the cost of making it. */
function* repeated(chunk: Buffer, times: number): Generator<Buffer> {
  for (let i = 0; i < times; i++) yield chunk;
}

/** Writes every chunk, waiting whenever the socket says its buffer is full, then ends our side. */
async function send(socket: TLSSocket, chunks: Iterable<Buffer>): Promise<Digest> {
  const hash = createHash('sha256');
  let bytes = 0;
  for (const chunk of chunks) {
    hash.update(chunk);
    bytes += chunk.length;
    if (!socket.write(chunk)) await waitForDrain(socket);
  }
  socket.end();
  return { bytes, sha256: hash.digest('hex') };
}

function waitForDrain(socket: TLSSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed) {
      reject(new Error('connection closed while sending'));
      return;
    }
    const done = (error?: Error): void => {
      socket.off('drain', done).off('error', done).off('close', closed);
      if (error) reject(error);
      else resolve();
    };
    const closed = (): void => done(new Error('connection closed while sending'));
    socket.on('drain', done).on('error', done).on('close', closed);
  });
}

/**
 * Hashes everything received until the server ends its side, and waits for the connection to
 * close. Rejects on any socket error (a reset instead of a clean TLS close), and on no close within
 * `ms`. Our side is ended when theirs is, unless the caller is still sending and will end it.
 */
function receive(socket: TLSSocket, ms = 30_000, { stillSending = false } = {}): Promise<Digest> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    let ended = false;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no clean close within ${ms} ms; got ${bytes} bytes, end ${ended ? 'seen' : 'not seen'}`));
    }, ms);
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    socket.once('end', () => {
      ended = true;
      if (!stillSending) socket.end();
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`connection error after ${bytes} bytes: ${error.message}`));
    });
    socket.once('close', () => {
      clearTimeout(timer);
      if (ended) resolve({ bytes, sha256: hash.digest('hex') });
      else reject(new Error(`closed without an end after ${bytes} bytes`));
    });
  });
}

/** Everything received until a clean close, as text. */
async function collect(socket: TLSSocket, ms = 30_000, options: { stillSending?: boolean } = {}): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  await receive(socket, ms, options);
  return Buffer.concat(chunks).toString();
}

/** A file of random bytes, written a chunk at a time; returns its digest. */
function writeRandomFile(path: string, total: number): Digest {
  const hash = createHash('sha256');
  const fd = openSync(path, 'w');
  try {
    for (const chunk of randomChunks(total)) {
      hash.update(chunk);
      writeSync(fd, chunk);
    }
  } finally {
    closeSync(fd);
  }
  return { bytes: total, sha256: hash.digest('hex') };
}

async function digestFile(path: string): Promise<Digest> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { bytes, sha256: hash.digest('hex') };
}

/** A status field of /proc/PID/status in KiB (VmRSS now, VmHWM the peak so far). */
function memoryKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const match = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
  if (!match) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(match[1]);
}

/**
 * Samples a process's resident memory until stopped, and returns the peak in MiB; the kernel's own
 * high-water mark (VmHWM) counts too, so a spike between two samples is not missed.
 */
function sampleRss(pid: number): { stop(): number } {
  let peak = memoryKiB(pid, 'VmRSS');
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, memoryKiB(pid, 'VmRSS'));
    } catch {
      clearInterval(timer); // gone: stop() reports it
    }
  }, 50);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, memoryKiB(pid, 'VmRSS'), memoryKiB(pid, 'VmHWM')) / 1024;
    },
  };
}

/** tlsd holds a few TLS records and pipe chunks per direction; without backpressure it would hold the whole GiB. */
const RSS_BOUND_MIB = 200;

t.test('nothing lost, both ways: 64 MiB echoed by cat, 64 MiB written by a child', async (t) => {
  const dir = scratchDir(t);
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog });
  const socket = await connectTls(tlsd.port, alice);
  const [received, sent] = await Promise.all([receive(socket, 60_000, { stillSending: true }), send(socket, randomChunks(64 * MiB))]);
  t.equal(sent.bytes, 64 * MiB, 'all 64 MiB sent');
  t.same(received, sent, 'the echo is byte-exact');

  const file = join(dir, 'random.bin');
  const written = writeRandomFile(file, 64 * MiB);
  const writer = await startTlsd(t, { identity: server, command: ['head', '-c', String(64 * MiB), file], env: quietSyslog });
  t.same(await receive(await connectTls(writer.port, alice), 60_000), written, "the child's 64 MiB arrive whole");
});

t.test('half-close: a peer that ends its side still gets the whole reply', async (t) => {
  const dir = scratchDir(t);
  const input = join(dir, 'input.bin');
  writeRandomFile(input, 100_000);
  const tlsd = await startTlsd(t, { identity: server, command: ['wc', '-c'], env: quietSyslog });

  t.test('node tls: socket.end() after 100000 bytes', async (t) => {
    const socket = await connectTls(tlsd.port, alice);
    const reply = collect(socket);
    socket.end(readFileSync(input));
    t.equal(await reply, '100000\n', 'wc counted all of it and its reply arrived');
  });

  // ncat ends its side with a TCP FIN only (shutdown(SHUT_WR), no close_notify) and reads on.
  t.test('ncat --ssl < file', async (t) => {
    const ncat = startClient(t, 'ncat', ['--ssl', '--ssl-key', alice.key, '--ssl-cert', alice.cert, '127.0.0.1', String(tlsd.port)], { stdin: { file: input } });
    t.same(await clientExit(ncat), { code: 0, signal: null }, 'ncat exits with status 0', { stderr: ncat.stderr() });
    t.equal(ncat.stdout().toString(), '100000\n', 'wc counted all of it and its reply arrived');
  });

  // gnutls-cli ends its side with close_notify alone (gnutls_bye(GNUTLS_SHUT_WR)) and reads on.
  t.test('gnutls-cli < file', async (t) => {
    // Its informational messages go to stdout unless --logfile sends them elsewhere.
    const log = join(dir, 'gnutls.log');
    const gnutls = startClient(t, 'gnutls-cli', ['--insecure', `--logfile=${log}`, `--x509keyfile=${alice.key}`, `--x509certfile=${alice.cert}`, `--port=${tlsd.port}`, '127.0.0.1'], { stdin: { file: input } });
    t.same(await clientExit(gnutls), { code: 0, signal: null }, 'gnutls-cli exits with status 0', { stderr: gnutls.stderr() });
    t.equal(gnutls.stdout().toString(), '100000\n', 'wc counted all of it and its reply arrived');
  });
  // openssl s_client cannot half-close: with -quiet it ignores the end of its input, and with
  // -no_ign_eof it closes the whole connection at once, before the reply. It is not tried here.
});

t.test('a child that writes and exits has all its output delivered, then a clean TLS close', async (t) => {
  const dir = scratchDir(t);
  /** A child that writes `bytes` random bytes, keeps a copy in `copy`, and exits at once. */
  const writeAndExit = (copy: string, bytes: number): string[] => ['sh', '-c', `head -c ${bytes} /dev/urandom | tee "$1"; exit 0`, 'sh', copy];

  // Node's client keeps its side open: the close comes from tlsd, after the child is gone.
  const copy = join(dir, 'sent.bin');
  const tlsd = await startTlsd(t, { identity: server, command: writeAndExit(copy, 5_000_000), env: quietSyslog });
  const got = await receive(await connectTls(tlsd.port, alice));
  t.same(got, await digestFile(copy), "node: all 5 MB of the child's output, then 'end' and no error");

  // gnutls-cli tells a close_notify ("Peer has closed the GnuTLS connection") from a bare TCP
  // close ("non-properly terminated"); its stdin stays open so that the close is tlsd's doing.
  // It reads a few bytes per system call, so it gets a smaller output to stay quick.
  const smallCopy = join(dir, 'small.bin');
  const small = await startTlsd(t, { identity: server, command: writeAndExit(smallCopy, 200_000), env: quietSyslog });
  const log = join(dir, 'gnutls.log');
  const gnutls = startClient(t, 'gnutls-cli', ['--insecure', `--logfile=${log}`, `--x509keyfile=${alice.key}`, `--x509certfile=${alice.cert}`, `--port=${small.port}`, '127.0.0.1'], { stdin: 'pipe' });
  const exit = await clientExit(gnutls);
  // Where each message goes depends on its kind: the fatal one goes to stderr, the rest to the log.
  const messages = `${readFileSync(log, 'utf8')}\n${gnutls.stderr()}`;
  t.same(exit, { code: 0, signal: null }, 'gnutls-cli exits with status 0', { messages });
  const output = gnutls.stdout();
  t.same({ bytes: output.length, sha256: createHash('sha256').update(output).digest('hex') }, await digestFile(smallCopy), 'gnutls-cli: every byte');
  t.match(messages, /Peer has closed the GnuTLS connection/, 'gnutls-cli saw close_notify');
  t.notMatch(messages, /non-properly terminated/, 'and no bare TCP close');
});

t.test('a child that exits without reading its input keeps its output, and tlsd serves on', async (t) => {
  const dir = scratchDir(t);
  const file = join(dir, 'output.bin');
  const output = writeRandomFile(file, MiB);

  t.test('1 MiB out while the peer sends 8 MiB the child never reads', async (t) => {
    // It reads a little, so the peer is already sending, then writes 1 MiB and exits.
    const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'head -c 1000 >/dev/null; exec head -c 1048576 "$1"', 'sh', file], env: quietSyslog });
    const socket = await connectTls(tlsd.port, alice);
    const [received, sent] = await Promise.all([receive(socket, 30_000, { stillSending: true }), send(socket, randomChunks(8 * MiB))]);
    t.equal(sent.bytes, 8 * MiB, 'the peer could send everything');
    t.same(received, output, 'the whole output arrived, the session ended cleanly');
    await tlsd.waitFor(/Process \d+ has exited with status 0/);

    const next = await connectTls(tlsd.port, alice);
    const [again] = await Promise.all([receive(next, 30_000, { stillSending: true }), send(next, randomChunks(1000))]);
    t.same(again, output, 'the next connection is served');
    t.equal(tlsd.proc.exitCode, null, 'tlsd is still running');
  });

  t.test('"ready", then the child reads 10 bytes and exits while the peer sends 4 MiB', async (t) => {
    const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo ready; exec head -c 10 >/dev/null'], env: quietSyslog });
    const socket = await connectTls(tlsd.port, alice);
    const [reply] = await Promise.all([collect(socket, 30_000, { stillSending: true }), send(socket, randomChunks(4 * MiB))]);
    t.equal(reply, 'ready\n', 'the output arrived, the session ended cleanly');
    const next = await connectTls(tlsd.port, alice);
    const nextReply = collect(next);
    next.end('0123456789');
    t.equal(await nextReply, 'ready\n', 'the next connection is served');
  });
});

t.test('bounded memory: a slow peer and a slow child hold back the other side', async (t) => {
  t.test('1 GiB from a child to a peer that reads slowly at first', async (t) => {
    const tlsd = await startTlsd(t, { identity: server, command: ['head', '-c', String(GiB), '/dev/zero'], env: quietSyslog });
    const rss = sampleRss(tlsd.proc.pid!);
    const socket = await connectTls(tlsd.port, alice);
    const received = receive(socket, 60_000);
    // Not reading for 3 s: without backpressure tlsd would read most of the GiB in that time.
    socket.pause();
    await sleep(3_000);
    for (let burst = 0; burst < 10; burst++) {
      socket.resume();
      await sleep(20);
      socket.pause();
      await sleep(100);
    }
    socket.resume();
    t.equal((await received).bytes, GiB, 'all of it arrived');
    const peak = rss.stop();
    t.ok(peak < RSS_BOUND_MIB, `tlsd's peak RSS ${peak.toFixed(0)} MiB is under ${RSS_BOUND_MIB} MiB`);
  });

  t.test('1 GiB from a peer to a child that reads slowly at first', async (t) => {
    // One 64 KiB read every 100 ms for 3 s, then as fast as it can; it counts what it read.
    const slowReader = `
      let bytes = 0, slow = true;
      setTimeout(() => (slow = false), 3000);
      process.stdin.on('data', (chunk) => {
        bytes += chunk.length;
        if (slow) { process.stdin.pause(); setTimeout(() => process.stdin.resume(), 100); }
      });
      process.stdin.on('end', () => process.stdout.write(bytes + '\\n'));`;
    const tlsd = await startTlsd(t, { identity: server, command: [process.execPath, '-e', slowReader], env: quietSyslog });
    const rss = sampleRss(tlsd.proc.pid!);
    const socket = await connectTls(tlsd.port, alice);
    const [reply] = await Promise.all([collect(socket, 60_000, { stillSending: true }), send(socket, repeated(randomBytes(MiB), 1024))]);
    t.equal(reply, `${GiB}\n`, 'the child counted every byte');
    const peak = rss.stop();
    t.ok(peak < RSS_BOUND_MIB, `tlsd's peak RSS ${peak.toFixed(0)} MiB is under ${RSS_BOUND_MIB} MiB`);
  });
});
