import { copyFileSync, existsSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { constants } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { connectTls, exchange, readAll } from './lib/client.js';
import { freePort } from './lib/examples.js';
import { liveIdentity, makeIdentity, tempDir } from './lib/identity.js';
import { processGone, resettable, serverFingerprint, spawnTlsd, tcpAttempt } from './lib/lifecycle.js';
import { cast, countMatches, markers, quietSyslog, readUntil, withDeadline } from './lib/limits-faults.js';
import { NotifySocket } from './lib/notify.js';
import { fileAppears } from './lib/text.js';
import { startTlsd } from './lib/tlsd.js';

const { server, alice, bob } = cast(t);
const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

t.test('bad stdin lines are logged and skipped; tlsd reads on and dials the next good one', async (t) => {
  const dir = tempDir();
  const acceptor = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo "hello from $SIDE"'], env: quietSyslog });
  const got = join(dir, 'dialer-got');
  const dialer = await startTlsd(t, { identity: alice, stdin: 'pipe', command: ['sh', '-c', 'head -n 1 >"$1"', 'sh', got], env: quietSyslog });
  const closed = await freePort();
  const skipped: Array<[string, string]> = [
    ['garbage', 'expected "host port [fingerprint]", got 1 field'],
    ['a b c d', 'expected "host port [fingerprint]", got 4 fields'],
    ['127.0.0.1 http', 'invalid port (expected 1 to 65535)'],
    ['127.0.0.1 70000', 'invalid port (expected 1 to 65535)'],
    ['127.0.0.1 0', 'invalid port (expected 1 to 65535)'],
    ['bad!host 443', 'invalid host'],
    ['\u001b[2Jevil 443', 'invalid host'],
    ['127.0.0.1 443 not-a-fingerprint', 'invalid fingerprint (expected 64 hex digits, colons allowed)'],
    [`127.0.0.1 443 ${'a'.repeat(63)}`, 'invalid fingerprint (expected 64 hex digits, colons allowed)'],
  ];
  const unreachable: Array<[string, RegExp]> = [
    // ENOTFOUND, or EAI_AGAIN where no resolver answers: the name never resolves.
    ['nonexistent.invalid 443', /Cannot connect to nonexistent\.invalid:443: getaddrinfo [A-Z_]+ nonexistent\.invalid$/m],
    [`127.0.0.1 ${closed}`, new RegExp(`Cannot connect to 127\\.0\\.0\\.1:${closed}: connect ECONNREFUSED 127\\.0\\.0\\.1:${closed}$`, 'm')],
  ];
  const stdin = dialer.proc.stdin!;
  stdin.write([...skipped.map(([line]) => line), '', ...unreachable.map(([line]) => line)].join('\n') + '\n');
  stdin.write(`${'x'.repeat(1 << 20)}\n`);
  stdin.write(`127.0.0.1 ${acceptor.port}\n`);

  t.equal(await fileAppears(got, 15_000), 'hello from SERVER\n', 'the good line after all of them still connects, and its child runs');
  for (const [line, why] of skipped) {
    await dialer.waitFor(new RegExp(`^tlsd: Skipped stdin line ${escape(JSON.stringify(line))}: ${escape(why)}$`, 'm'), 5_000);
  }
  for (const [line, pattern] of unreachable) {
    await dialer.waitFor(new RegExp(`^tlsd: Connecting to ${escape(line.replace(' ', ', port '))}$`, 'm'), 5_000);
    await dialer.waitFor(pattern, 15_000);
  }
  await dialer.waitFor(/^tlsd: Skipped a stdin line of 1048576 bytes: longer than 4096$/m);
  const log = dialer.stderr();
  t.equal(countMatches(log, /^tlsd: Skipped /m), skipped.length + 1, `each bad line is one log line, the blank one none:\n${log}`);
  t.equal(countMatches(log, /^tlsd: Cannot connect to /m), unreachable.length);
  t.notOk(log.includes('\u001b'), 'control characters from stdin are escaped, never logged raw');
  t.match(log, new RegExp(`127\\.0\\.0\\.1:${acceptor.port}: connected as CLIENT, peer SHA256 ${server.fingerprint}`));
  t.equal(dialer.proc.exitCode, null, 'tlsd is still running');
  stdin.end();
});

// Exits when $2 (a signal name) arrives, writing "got $2" to $1; never reads stdin, so EOF alone
// does not end it. The loop is bounded so that a failing test leaves no process behind for long.
const WAITS_FOR_SIGNAL = 'trap \'echo "got $2" >"$1"; exit 0\' "$2"; echo ready; i=0; while [ $i -lt 60 ]; do sleep 1 </dev/null >/dev/null 2>&1 & wait $!; i=$((i+1)); done';

t.test('-s SIGNAL is delivered to the child when its connection ends', async (t) => {
  const cases: Array<[string, string]> = [
    ['USR1', 'USR1'],
    [String(constants.signals.SIGUSR2), 'USR2'],
    ['SIGTERM', 'TERM'],
  ];
  for (const [spec, name] of cases) {
    t.test(`-s ${spec}: the peer resets`, async (t) => {
      const file = join(tempDir(), 'signal');
      const tlsd = await startTlsd(t, { identity: server, options: ['-s', spec], command: ['sh', '-c', WAITS_FOR_SIGNAL, 'sh', file, name], env: quietSyslog });
      const peer = await resettable(t, tlsd.port, alice);
      await readUntil(peer.tls, 'ready\n');
      t.notOk(existsSync(file), 'no signal while the connection is up');
      peer.reset();
      t.equal(await fileAppears(file, 10_000), `got ${name}\n`, `the child got SIG${name}`);
      await tlsd.waitFor(/Process \d+ has exited with status 0\n[^]*session ended/);
    });
  }

  t.test('without -s no signal is sent: the child just sees EOF', async (t) => {
    const file = join(tempDir(), 'signal');
    const script = 'trap \'echo "got USR1" >"$1"; exit 0\' USR1; echo ready; cat >/dev/null; echo eof >"$1"';
    const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', script, 'sh', file], env: quietSyslog });
    const peer = await resettable(t, tlsd.port, alice);
    await readUntil(peer.tls, 'ready\n');
    peer.reset();
    t.equal(await fileAppears(file, 10_000), 'eof\n');
  });

  // The -s signal stands in for EOF, for children that never read their input: it goes with the
  // end of the child's stdin, whichever ends the connection first, and once per child. This child
  // never reads, counts each USR1 in a file ($1), says so to the peer, and runs until $2 exists.
  const COUNTS_SIGNALS = 'trap \'echo x >>"$1"; echo "got USR1"\' USR1; echo ready; i=0; while [ ! -e "$2" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done';
  const orders: Array<{ what: string; first: 'end' | 'reset'; then: 'reset' | 'shutdown' }> = [
    { what: 'the peer ends its side and keeps reading, then resets', first: 'end', then: 'reset' },
    { what: 'the peer ends its side and keeps reading, then tlsd shuts down', first: 'end', then: 'shutdown' },
    { what: 'the connection is lost first, then tlsd shuts down', first: 'reset', then: 'shutdown' },
  ];
  for (const { what, first, then } of orders) {
    t.test(`-s USR1: ${what}: one signal`, async (t) => {
      const dir = tempDir();
      const [count, stop] = [join(dir, 'count'), join(dir, 'stop')];
      const tlsd = await startTlsd(t, { identity: server, options: ['-s', 'USR1'], command: ['sh', '-c', COUNTS_SIGNALS, 'sh', count, stop], env: quietSyslog });
      const stderrClosed = once(tlsd.proc, 'close');
      const peer = await resettable(t, tlsd.port, alice);
      await readUntil(peer.tls, 'ready\n');
      const label = (await tlsd.waitFor(/^tlsd: (127\.0\.0\.1:\d+): connected as SERVER/m))[1]!;
      const pid = (await tlsd.waitFor(new RegExp(`^tlsd: ${escape(label)}: started child (\\d+)$`, 'm')))[1]!;
      if (first === 'end') {
        peer.tls.end(); // close_notify and FIN; the peer still reads
        t.equal(await readUntil(peer.tls, 'got USR1\n'), 'got USR1\n', 'the child got the signal, and what it wrote after it reached the peer');
      } else {
        peer.reset();
        await fileAppears(count, 10_000);
        await tlsd.waitFor(new RegExp(`^tlsd: ${escape(label)}: connection (lost|error)`, 'm'));
      }
      if (then === 'reset') {
        peer.reset();
        await tlsd.waitFor(new RegExp(`^tlsd: ${escape(label)}: connection (lost|error)`, 'm'));
      } else {
        tlsd.proc.kill('SIGTERM');
        await tlsd.waitFor(/^tlsd: Terminating gracefully$/m);
      }
      // A moment for a second signal to land, were one sent: the trap runs within 0.1 s.
      await sleep(500);
      writeFileSync(stop, '');
      const exitLine = new RegExp(`^tlsd: Process ${pid} has exited with status 0$`, 'm');
      if (then === 'shutdown') {
        t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits once the child has'), 0);
        await withDeadline(stderrClosed, 5_000, "tlsd's stderr ends");
        t.match(tlsd.stderr(), exitLine);
      } else await tlsd.waitFor(exitLine);
      t.equal(readFileSync(count, 'utf8'), 'x\n', 'the child got USR1 once');
      t.equal(countMatches(tlsd.stderr(), new RegExp(`^tlsd: Waiting for process ${pid} to exit$`, 'm')), 1, 'its stdin was ended once');
    });
  }

  t.test('-s USR1 also reaches the children when tlsd shuts down', async (t) => {
    const file = join(tempDir(), 'signal');
    const tlsd = await startTlsd(t, { identity: server, options: ['-s', 'USR1'], command: ['sh', '-c', WAITS_FOR_SIGNAL, 'sh', file, 'USR1'], env: quietSyslog });
    const socket = await connectTls(tlsd.port, alice);
    await readUntil(socket, 'ready\n');
    const ended = readAll(socket);
    tlsd.proc.kill('SIGTERM');
    t.equal(await fileAppears(file, 10_000), 'got USR1\n');
    await withDeadline(ended, 10_000, 'the peer sees the end');
    socket.end();
    t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits'), 0);
  });
});

t.test('SIGHUP reloads key and certificate for new connections', async (t) => {
  const dir = tempDir();
  const live = liveIdentity(dir);
  live.install(server);
  const next = makeIdentity(dir, 'next');
  const tlsd = await startTlsd(t, { identity: { key: live.key, cert: live.cert, fingerprint: server.fingerprint }, command: ['cat'], env: quietSyslog });

  const open = await connectTls(tlsd.port, alice);
  t.teardown(() => void open.destroy());
  t.equal(serverFingerprint(open), server.fingerprint, 'before: the first certificate');
  open.write('one\n');
  await readUntil(open, 'one\n');

  live.install(next);
  tlsd.proc.kill('SIGHUP');
  await tlsd.waitFor(new RegExp(`^tlsd: Reloaded key and certificate, SHA256 ${next.fingerprint}$`, 'm'));
  const fresh = await connectTls(tlsd.port, bob);
  t.equal(serverFingerprint(fresh), next.fingerprint, 'a new connection sees the new certificate');
  const reply = readAll(fresh);
  fresh.end('fresh\n');
  t.equal((await reply).toString(), 'fresh\n');
  open.write('two\n');
  t.equal(await readUntil(open, 'two\n'), 'two\n', 'the open connection keeps working');

  const broken: Array<[string, () => void, string]> = [
    ['a certificate file that is not PEM', () => writeFileSync(live.cert, 'garbage\n'), `Cannot use certificate file ${live.cert}: no start line`],
    ["another key's certificate", () => copyFileSync(alice.cert, live.cert), `Key file ${live.key} does not match certificate file ${live.cert}`],
    ['no certificate file', () => rmSync(live.cert), `Cannot read certificate file ${live.cert}: no such file or directory (ENOENT)`],
  ];
  for (const [what, breakIt, why] of broken) {
    breakIt();
    tlsd.proc.kill('SIGHUP');
    await tlsd.waitFor(new RegExp(`^tlsd: Failed to load key or certificate: ${escape(why)}.*\\ntlsd: Kept the old key and certificate, SHA256 ${next.fingerprint}$`, 'm'));
    const after = await connectTls(tlsd.port, bob);
    t.equal(serverFingerprint(after), next.fingerprint, `${what}: the last good certificate stays`);
    const echoed = readAll(after);
    after.end(`${what}\n`);
    t.equal((await echoed).toString(), `${what}\n`, `${what}: serving goes on`);
  }
  open.write('three\n');
  t.equal(await readUntil(open, 'three\n'), 'three\n', 'the first connection is still served');
  t.equal(tlsd.proc.exitCode, null);
});

t.test('SIGTERM and SIGINT: stop accepting, children see EOF, tlsd waits for them and exits 0', async (t) => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    t.test(signal, async (t) => {
      const dir = tempDir();
      // The child outlives EOF a little and still writes: tlsd must wait, and deliver it.
      const script = 'echo ready; cat >/dev/null; sleep 0.3; echo bye; echo eof >"$1/eof-$$"';
      const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', script, 'sh', dir], env: quietSyslog });
      const sockets = await Promise.all([alice, bob].map((identity) => connectTls(tlsd.port, identity)));
      await Promise.all(sockets.map((socket) => readUntil(socket, 'ready\n')));
      const replies = sockets.map((socket) => readAll(socket, 10_000));

      tlsd.proc.kill(signal);
      await tlsd.waitFor(/^tlsd: Terminating gracefully$/m);
      await tlsd.waitFor(/^tlsd: Waiting for process \d+ to exit\n(?:.*\n)*?tlsd: Waiting for process \d+ to exit$/m);
      t.equal(await tcpAttempt(tlsd.port), 'ECONNREFUSED', 'new connections are refused');
      t.same((await Promise.all(replies)).map(String), ['bye\n', 'bye\n'], 'what children write after EOF still arrives');
      for (const socket of sockets) socket.end();
      t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits'), 0, 'exit status 0');
      t.equal(markers(dir, 'eof-').length, 2, 'both children saw EOF and finished before tlsd exited');
    });
  }
});

t.test('a second SIGTERM or SIGINT kills a child that will not exit, and tlsd exits 1 at once', async (t) => {
  for (const [first, second] of [['SIGTERM', 'SIGTERM'], ['SIGINT', 'SIGINT'], ['SIGINT', 'SIGTERM']] as const) {
    t.test(`${first}, then ${second}`, async (t) => {
      // Ignores both signals and never reads: nothing but SIGKILL ends it (exec keeps one pid).
      const script = 'trap "" TERM INT; echo ready; exec sleep 30 </dev/null';
      const tlsd = await startTlsd(t, { identity: server, options: ['-s', 'TERM'], command: ['sh', '-c', script], env: quietSyslog });
      const socket = await connectTls(tlsd.port, alice);
      socket.on('error', () => {}); // killed sessions may well end in a reset
      await readUntil(socket, 'ready\n');
      const pid = Number((await tlsd.waitFor(/started child (\d+)/))[1]);
      t.teardown(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone, as it should be
        }
      });

      tlsd.proc.kill(first);
      await tlsd.waitFor(new RegExp(`^tlsd: Waiting for process ${pid} to exit$`, 'm'));
      const early = await Promise.race([tlsd.exited.then(() => 'exited'), sleep(500).then(() => 'waiting')]);
      t.equal(early, 'waiting', 'tlsd waits for the child');

      const sent = Date.now();
      tlsd.proc.kill(second);
      t.equal(await withDeadline(tlsd.exited, 5_000, 'tlsd exits after the second signal'), 1, 'exit status 1');
      t.ok(Date.now() - sent < 2_000, `at once (${Date.now() - sent} ms)`);
      t.match(tlsd.stderr(), /^tlsd: Killing 1 remaining session\(s\)$/m);
      t.ok(await processGone(pid), `the child ${pid} is killed too`);
    });
  }
});

t.test('syslog', async (t) => {
  t.test('without -e, messages go to the syslog socket only, with priority, ident and pid', async (t) => {
    const receiver = new NotifySocket(t);
    const tlsd = spawnTlsd(t, ['-i', 'tlsd@syslog', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, '--', 'cat'], { TLSD_SYSLOG_SOCKET: receiver.path });
    const record = (priority: number, message: string): RegExp =>
      new RegExp(`^<${priority}>(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 1-3]\\d \\d{2}:\\d{2}:\\d{2} tlsd@syslog\\[${tlsd.proc.pid}\\]: ${message}$`);
    // Facility daemon (3 << 3) with the levels of docs/manual.md's "Log messages": debug (7), info (6).
    await receiver.waitFor((n) => record(31, 'Initializing').test(n.text), 'Initializing');
    const listening = await receiver.waitFor((n) => record(30, 'Listening on 127\\.0\\.0\\.1, port \\d+').test(n.text), 'Listening on');
    const port = Number(/port (\d+)$/.exec(listening.text)![1]);
    await receiver.waitFor((n) => record(30, `Our certificate's SHA256: ${server.fingerprint}`).test(n.text), 'the fingerprint line');
    t.equal(await exchange(port, alice, 'via syslog\n'), 'via syslog\n');
    await receiver.waitFor((n) => record(30, `127\\.0\\.0\\.1:\\d+: connected as SERVER, peer SHA256 ${alice.fingerprint}`).test(n.text), 'the connection');
    // Stopped once the session is over: else shutdown would wait for its child.
    await receiver.waitFor((n) => record(30, '127\\.0\\.0\\.1:\\d+: session ended').test(n.text), 'the end of the session');
    tlsd.proc.kill('SIGTERM');
    t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits'), 0);
    await receiver.waitFor((n) => record(30, 'Shutting down').test(n.text), 'Shutting down');
    t.equal(tlsd.stderr(), '', 'nothing on stderr while syslog takes the messages');
  });

  const fallbacks: Array<[string, () => string]> = [
    ['no socket at that path', () => join(tempDir(), 'no-such-socket')],
    [
      'a socket nobody is bound to any more',
      () => {
        const dead = new NotifySocket(t);
        dead.close(); // the path stays; sending to it is refused
        return dead.path;
      },
    ],
  ];
  t.test('a syslog socket that appears later is used again within a second', async (t) => {
    // A symlink, so that the path tlsd was given can point at a socket made later.
    const dir = tempDir();
    const link = join(dir, 'log');
    symlinkSync(join(dir, 'not-yet'), link);
    const tlsd = spawnTlsd(t, ['-i', 'tlsd@later', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, '--', 'cat'], { TLSD_SYSLOG_SOCKET: link });
    const port = Number((await tlsd.waitFor(/^tlsd@later: Listening on 127\.0\.0\.1, port (\d+)$/m))[1]);
    const receiver = new NotifySocket(t);
    rmSync(link);
    symlinkSync(receiver.path, link);
    await sleep(1_200);
    t.equal(await exchange(port, alice, 'syslog is back\n'), 'syslog is back\n');
    await receiver.waitFor((n) => /tlsd@later\[\d+\]: 127\.0\.0\.1:\d+: connected as SERVER/.test(n.text), 'the connection, through syslog again');
    t.notMatch(tlsd.stderr(), /connected as SERVER/, 'and not on stderr');
  });

  for (const [what, socketPath] of fallbacks) {
    t.test(`${what}: tlsd runs and logs to stderr instead`, async (t) => {
      const tlsd = spawnTlsd(t, ['-i', 'tlsd@nolog', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, '--', 'cat'], { TLSD_SYSLOG_SOCKET: socketPath() });
      const port = Number((await tlsd.waitFor(/^tlsd@nolog: Listening on 127\.0\.0\.1, port (\d+)$/m))[1]);
      t.equal(await exchange(port, alice, 'no syslog\n'), 'no syslog\n');
      await tlsd.waitFor(new RegExp(`^tlsd@nolog: 127\\.0\\.0\\.1:\\d+: connected as SERVER, peer SHA256 ${alice.fingerprint}$`, 'm'));
      t.equal(tlsd.proc.exitCode, null, 'still running');
    });
  }
});
