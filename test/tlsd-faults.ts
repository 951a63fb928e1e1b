import { spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, openSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { constants } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import t, { type Test } from 'tap';
import { connectTls, exchange } from './lib/client.js';
import { tempDir } from './lib/identity.js';
import { attempt, childrenOf, countMatches, markers, openFds, rawConnect, readUntil, waitUntil, watchClose, withDeadline, type Attempt, cast, quietSyslog } from './lib/limits-faults.js';
import { bin, startTlsd, watch, type RunningTlsd } from './lib/tlsd.js';
import { resetSocket } from './lib/tcp-reset.js';

const { server, alice, bob } = cast(t);

/** A temporary directory removed when the test that made it ends. */
function scratch(t: Test): string {
  const dir = tempDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function writeScript(path: string, body: string, mode: number): void {
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, mode);
}

function peerLabel(result: Attempt): string {
  return `127.0.0.1:${result.localPort}`;
}

function isRunning(tlsd: RunningTlsd): boolean {
  return tlsd.proc.exitCode === null && tlsd.proc.signalCode === null;
}

/** A refused or failed session: the peer sees its connection end, with nothing from a child. */
async function expectNoService(t: Test, tlsd: RunningTlsd, input: string): Promise<Attempt> {
  const result = await attempt(tlsd.port, alice, input);
  t.equal(result.data, '', 'the peer gets nothing and its connection closes');
  return result;
}

t.test('a command that is not on PATH: the session ends with a log line, tlsd goes on', async (t) => {
  const dir = scratch(t);
  const name = 'tlsd-test-not-there-yet';
  const tlsd = await startTlsd(t, { identity: server, command: [name], env: { ...quietSyslog, PATH: `${dir}:${process.env.PATH}` } });
  const failed = await expectNoService(t, tlsd, 'hello\n');
  await tlsd.waitFor(new RegExp(`${peerLabel(failed)}: .*${name}.*(ENOENT|not found)`));
  t.pass('tlsd logs the peer, the command and ENOENT');
  t.ok(isRunning(tlsd), 'tlsd is still running');

  // The same tlsd finds the command once it exists: nothing about the failure was remembered.
  writeScript(join(dir, name), 'echo "now here: $(cat)"', 0o755);
  t.equal(await exchange(tlsd.port, bob, 'hello\n'), 'now here: hello\n', 'the next peer is served');
});

t.test('a command that is not executable: the session ends with EACCES logged, tlsd goes on', async (t) => {
  const dir = scratch(t);
  const script = join(dir, 'not-executable');
  writeScript(script, 'echo "ran: $(cat)"', 0o644);
  const tlsd = await startTlsd(t, { identity: server, command: [script], env: quietSyslog });
  for (const round of [1, 2]) {
    const failed = await expectNoService(t, tlsd, 'hello\n');
    await tlsd.waitFor(new RegExp(`${peerLabel(failed)}: .*${script}.*EACCES`));
    t.pass(`attempt ${round}: tlsd logs the peer, the command and EACCES`);
  }
  t.ok(isRunning(tlsd), 'tlsd is still running');
  chmodSync(script, 0o755);
  t.equal(await exchange(tlsd.port, bob, 'hello\n'), 'ran: hello\n', 'the next peer is served once the file is executable');
});

t.test('a child that crashes: its end is logged, the connection ends, tlsd goes on', async (t) => {
  // ulimit -c 0: a crash test must not leave a core file behind.
  const crashOnRequest = ['sh', '-c', 'ulimit -c 0; read how; case "$how" in segv) kill -SEGV $$ ;; kill) kill -KILL $$ ;; esac; echo "fine $how"'];
  const tlsd = await startTlsd(t, { identity: server, command: crashOnRequest, env: quietSyslog });
  for (const [how, signal] of [['segv', 'SIGSEGV'], ['kill', 'SIGKILL']] as const) {
    const crashed = await expectNoService(t, tlsd, `${how}\n`);
    const pid = (await tlsd.waitFor(new RegExp(`${peerLabel(crashed)}: started child (\\d+)`)))[1];
    await tlsd.waitFor(new RegExp(`^tlsd: Process ${pid} was terminated by signal ${constants.signals[signal]}$`, 'm'));
    t.pass(`${signal}: tlsd logs that the child was terminated by ${signal}`);
    await tlsd.waitFor(new RegExp(`${peerLabel(crashed)}: session ended`));
    t.pass(`${signal}: and that the session ended`);
  }
  t.ok(isRunning(tlsd), 'tlsd is still running');
  t.equal(await exchange(tlsd.port, bob, 'ok\n'), 'fine ok\n', 'the next peer is served');
});

t.test('a peer that resets mid-transfer: the child sees the end, the session ends, tlsd goes on', async (t) => {
  const marks = scratch(t);
  // upload: counts what arrived until EOF; download: sends 50 MB. Either way a file marks its end.
  const script = [
    'read how',
    'if [ "$how" = download ]; then head -c 50000000 /dev/zero; echo "$?" > "$MARKS/tmp.$$"',
    'else wc -c | tr -d " " > "$MARKS/tmp.$$"; cat "$MARKS/tmp.$$"; fi',
    'mv "$MARKS/tmp.$$" "$MARKS/end-$how.$$"',
  ].join('\n');
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', script], env: { ...quietSyslog, MARKS: marks } });

  t.test('while the peer uploads', async (t) => {
    const { reset, label } = await resettableClient(t, tlsd.port);
    const chunk = Buffer.alloc(64 * 1024, 'u');
    reset.tls.write('upload\n');
    for (let sent = 0; sent < 4_000_000; sent += chunk.length) {
      if (!reset.tls.write(chunk)) await withDeadline(new Promise((resolve) => reset.tls.once('drain', resolve)), 15_000, 'tlsd keeps reading');
    }
    reset.now();
    await waitUntil(() => markers(marks, 'end-upload.').length === 1, 'the child reaches the end of its input', tlsd);
    const counted = readFileSync(join(marks, markers(marks, 'end-upload.')[0]!), 'utf8').trim();
    t.match(counted, /^\d+$/, `the child got EOF after ${counted} bytes and ended normally`);
    await tlsd.waitFor(new RegExp(`${label}: session ended`));
    t.pass('tlsd logs the end of the session');
  });

  t.test('while the peer downloads', async (t) => {
    const { reset, label } = await resettableClient(t, tlsd.port);
    reset.tls.write('download\n');
    await withDeadline(new Promise((resolve) => reset.tls.once('data', resolve)), 15_000, 'the download starts');
    reset.now();
    await waitUntil(() => markers(marks, 'end-download.').length === 1, 'the child ends', tlsd, 30_000);
    t.pass('the sending child ends');
    await tlsd.waitFor(new RegExp(`${label}: session ended`), 30_000);
    t.pass('tlsd logs the end of the session');
  });

  t.test('the next peer is served', async (t) => {
    t.ok(isRunning(tlsd), 'tlsd is still running');
    t.equal(await exchange(tlsd.port, bob, 'upload\nabc'), '3\n', 'its upload is counted and answered');
  });
});

t.test('a peer that ends its side and then resets: -s reaches the child at the end, tlsd notices the reset, the session ends', async (t) => {
  const marks = scratch(t);
  // The child leaves a process behind that keeps its stdout (as a daemon-ish script would), reads
  // to EOF, and exits on SIGTERM.
  const script = 'trap "echo term > \"$MARKS/term.$$\"; exit 0" TERM; sleep 60 & echo ready; cat > /dev/null; wait';
  const tlsd = await startTlsd(t, { identity: server, options: ['-s', 'TERM'], command: ['sh', '-c', script], env: { ...quietSyslog, MARKS: marks } });
  const { reset, label } = await resettableClient(t, tlsd.port);
  await readUntil(reset.tls, 'ready\n');
  reset.tls.end('bye\n');
  // The end of the peer's side is the end of the child's input: -s goes with it.
  await waitUntil(() => markers(marks, 'term.').length === 1, 'the child gets SIGTERM', tlsd);
  await sleep(300); // the FIN is in; Node reads no more from this connection
  reset.now();
  await tlsd.waitFor(new RegExp(`${label}: connection lost \\((EPIPE|ECONNRESET)\\)`), 10_000);
  t.pass('the reset is noticed although nothing was being read or written');
  await tlsd.waitFor(new RegExp(`${label}: session ended`), 10_000);
  t.pass('the session ends although the sleep left behind still holds the stdout pipe');
  t.equal(markers(marks, 'term.').length, 1, 'one SIGTERM: the reset sent no second one');
  t.notMatch(tlsd.stderr(), /unknown peer/, 'every line names the peer by its address');
});

t.test('a peer that resets while its child is not reading: the session ends all the same', async (t) => {
  // The child does not read for a while, so backpressure stops tlsd reading the connection too.
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'sleep 3; exec cat > /dev/null'] });
  const { reset, label } = await resettableClient(t, tlsd.port);
  // The session must be tlsd's before the reset: a reset that beats the server's side of the
  // handshake is a failed handshake, another case. (Node 24 sends a write on the next tick: without
  // this wait its reset followed the client's Finished at once and won every time.)
  await tlsd.waitFor(new RegExp(`${label}: started child`));
  // Then write until writes no longer drain: the child's pipe is full, tlsd has stopped reading,
  // and what follows waits in the kernel's buffers.
  const chunk = Buffer.alloc(64 * 1024, 'x');
  for (let sent = 0; sent < 16_000_000; sent += chunk.length) {
    if (reset.tls.write(chunk)) continue;
    const drained = await Promise.race([new Promise<boolean>((resolve) => reset.tls.once('drain', () => resolve(true))), sleep(500).then(() => false)]);
    if (!drained) break;
  }
  reset.now();
  await tlsd.waitFor(new RegExp(`${label}: connection lost`), 10_000);
  const pid = (await tlsd.waitFor(new RegExp(`${label}: started child (\\d+)`)))[1];
  t.notMatch(tlsd.stderr(), new RegExp(`Process ${pid} has exited`), 'noticed while the child was still asleep');
  await tlsd.waitFor(new RegExp(`Process ${pid} has exited with status 0`), 10_000);
  await tlsd.waitFor(new RegExp(`${label}: session ended`), 10_000);
  t.pass('the child reads what had arrived, sees EOF, and the session ends');
});

interface Resettable {
  tls: ReturnType<typeof tlsConnect>;
  /** Sends a TCP reset and forgets the connection, as a crashing peer or a middlebox would. */
  now(): void;
}

/** A TLS client over a TCP socket we keep hold of, so that it can end with a reset, not a FIN. */
async function resettableClient(t: Test, port: number): Promise<{ reset: Resettable; label: string }> {
  const raw = await rawConnect(t, port);
  const label = `127.0.0.1:${raw.localPort}`;
  const tls = tlsConnect({ socket: raw, rejectUnauthorized: false, key: readFileSync(alice.key), cert: readFileSync(alice.cert) });
  tls.on('error', () => {}); // after the reset, whatever the TLS layer thinks of it does not matter
  await withDeadline(new Promise((resolve) => tls.once('secureConnect', resolve)), 15_000, 'the handshake');
  return { reset: { tls, now: () => resetSocket(raw, tls) }, label };
}

t.test('out of file descriptors: tlsd logs it, stays up, and serves again once they are back', async (t) => {
  const limit = 64;
  // The shell execs tlsd in its place, so the process we watch is tlsd itself.
  const tlsdArgs = [bin('tlsd'), '-e', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, '--handshake-timeout', '2', '--', 'cat'];
  const proc = spawn('sh', ['-c', `ulimit -n ${limit} && exec "$@"`, 'sh', ...tlsdArgs], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...quietSyslog } });
  const tlsd = watch(proc);
  t.teardown(async () => {
    if (isRunning(tlsd)) {
      proc.kill('SIGKILL');
      await tlsd.exited;
    }
  });
  tlsd.port = Number((await tlsd.waitFor(/Listening on \S+, port (\d+)/))[1]);

  // More idle connections than tlsd can hold descriptors for.
  const idle: Socket[] = [];
  for (let i = 0; i < limit + 16; i++) idle.push(await rawConnect(t, tlsd.port));
  const watches = idle.map((socket) => watchClose(socket));
  await waitUntil(() => watches.some((w) => w.closed), 'tlsd, out of descriptors, sheds connections', tlsd);
  const starved = await attempt(tlsd.port, alice, 'starved\n');
  t.equal(starved.data, '', 'a client that arrives while descriptors are out is closed, not left hanging');
  t.match(tlsd.stderr(), /EMFILE|too many open files/i, 'tlsd logs that it ran out of descriptors');
  t.ok(isRunning(tlsd), 'tlsd is still running');

  for (const socket of idle) socket.destroy();
  // tlsd needs a moment to see the ends of the idle connections (or their 2 s handshake deadline).
  const deadline = Date.now() + 20_000;
  let reply = '';
  while (reply !== 'back\n' && Date.now() < deadline) {
    reply = (await attempt(tlsd.port, bob, 'back\n')).data;
    if (reply !== 'back\n') await sleep(500);
  }
  t.equal(reply, 'back\n', 'once the idle connections are gone, a client is served again');
  t.ok(isRunning(tlsd), 'tlsd is still running');
});

t.test('no zombies and no leaked descriptors after many sessions', async (t) => {
  const sessions = 1000;
  const parallel = 20;
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo x'], env: quietSyslog });
  const pid = tlsd.proc.pid!;
  const ended = (): number => countMatches(tlsd.stderr(), /: session ended/);

  t.equal(await exchange(tlsd.port, alice, ''), 'x\n', 'the first session works');
  await waitUntil(() => ended() === 1, 'the first session ends', tlsd);
  const baseline = openFds(pid).size;

  let next = 1;
  let wrong = 0;
  const worker = async (): Promise<void> => {
    while (next < sessions) {
      next++;
      if ((await exchange(tlsd.port, alice, '')) !== 'x\n') wrong++;
    }
  };
  await withDeadline(Promise.all(Array.from({ length: parallel }, worker)), 60_000, `${sessions} sessions`);
  t.equal(wrong, 0, `every one of ${sessions} sessions got its reply`);
  await waitUntil(() => ended() === sessions, 'every session ends', tlsd, 20_000);

  const children = childrenOf(pid);
  t.same(children.filter((child) => child.state === 'Z'), [], 'tlsd has no zombie children');
  t.same(children, [], 'nor any child at all');
  const fds = openFds(pid).size;
  t.ok(fds <= baseline + 3, `tlsd holds ${fds} descriptors, as after the first session (${baseline})`);
  t.equal(await exchange(tlsd.port, bob, ''), 'x\n', 'and still serves');
});

for (const spawner of ['helper', 'node'] as const) {
  t.test(`a child holds only its own stdin, stdout and stderr, whatever tlsd inherited (${spawner === 'node' ? "Node's spawn" : 'spawn helper'})`, async (t) => {
    // The first line chooses: hold the session open (cat), or list the child's own descriptors.
    // `exec ls` lists the very process tlsd started; ls adds one descriptor, the directory it reads.
    const listOrHold = ['sh', '-c', 'read what; if [ "$what" = list ]; then exec ls -l /proc/self/fd; fi; exec cat'];
    // tlsd starts with the key file open at 3 and at 300, as a careless parent would leave it.
    // (Node itself marks low descriptors such as 3 close-on-exec at start-up, but not 300.)
    const leaked = openSync(server.key, 'r');
    t.teardown(() => closeSync(leaked));
    const tlsd = await startTlsd(t, { identity: server, command: listOrHold, env: { ...quietSyslog, ...(spawner === 'node' ? { TLSD_SPAWNER: 'node' } : {}) }, inherit: { 3: leaked, 300: leaked } });
    t.notOk(openFds(tlsd.proc.pid!).has(300), 'tlsd itself closed what it inherited at 300');
    const holder = await connectTls(tlsd.port, alice);
    t.teardown(() => void holder.destroy());
    holder.write('hold\nping\n');
    await readUntil(holder, 'ping\n');

    const listing = await exchange(tlsd.port, bob, 'list\n');
    const fds = new Map<number, string>();
    for (const match of listing.matchAll(/ (\d+) -> (.*)$/gm)) fds.set(Number(match[1]), match[2]!);
    t.ok(fds.size > 0, 'the child listed its descriptors', { listing });

    const directories = [...fds].filter(([, target]) => /^\/proc\/\d+\/fd$/.test(target));
    t.equal(directories.length, 1, 'one descriptor is the directory ls is reading', { listing });
    const expected = [0, 1, 2, ...directories.map(([fd]) => fd)];
    t.same([...fds.keys()].sort((a, b) => a - b), expected.sort((a, b) => a - b), 'nothing else is open: 0, 1, 2, not what tlsd inherited at 3 and 300', { listing });

    // Node gives children a Unix socket pair, not pipe(2): a stream all the same (see tlsd(1)).
    t.match(fds.get(0), /^socket:\[\d+\]$/, 'stdin is a local stream of its own', { listing });
    t.match(fds.get(1), /^socket:\[\d+\]$/, 'stdout is a local stream of its own', { listing });
    t.not(fds.get(0), fds.get(1), 'stdin and stdout are two different channels');
    t.equal(fds.get(2), readlinkSync(`/proc/${tlsd.proc.pid}/fd/2`), "stderr is tlsd's own stderr");

    const network = tcpSocketInodes();
    const onNetwork = [...fds].filter(([, target]) => network.has(target));
    t.same(onNetwork, [], "no descriptor is a TCP socket: not the listener, not this or another peer's connection", { listing });
    const keyFile = realpathSync(server.key);
    t.notOk([...fds.values()].includes(keyFile), 'no descriptor points at the key file', { listing });
  });
}

/** `socket:[INODE]` of every TCP socket on this host (IPv4 and IPv6), as /proc/PID/fd names them. */
function tcpSocketInodes(): Set<string> {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!existsSync(table)) continue;
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const inode = line.trim().split(/\s+/)[9];
      if (inode && inode !== '0') inodes.add(`socket:[${inode}]`);
    }
  }
  return inodes;
}
