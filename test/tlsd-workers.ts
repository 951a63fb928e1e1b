import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { readAll } from './lib/client.js';
import { eventually } from './lib/eventually.js';
import { liveIdentity, makeIdentity, tempDir } from './lib/identity.js';
import { processGone, tcpAttempt } from './lib/lifecycle.js';
import { cast, countMatches, markers, quietSyslog, rawConnect, readUntil, refusalsLogged, settledStatus, statusOf, waitUntil, watchClose, withDeadline } from './lib/limits-faults.js';
import { startTlsd, type RunningTlsd } from './lib/tlsd.js';
import { burst, childPid, ended, escapeRegExp, HOLDS, holdPeer, keysOf, logLine, outcomes, served, spread, startedWorkers, TWO_WORKERS, workerOf, type Held } from './lib/workers.js';

const { server, alice, bob } = cast(t);
const aliceKeys = keysOf(alice);
/** Long enough that no handshake times out while a test looks; a broken case still ends. */
const patient = ['--handshake-timeout', '120'];

/** tlsd with `--workers 2` and these options, once both workers have started. */
async function startWorkers(t: Test, options: string[], command = HOLDS, more: Partial<Parameters<typeof startTlsd>[1]> = {}): Promise<{ tlsd: RunningTlsd; pids: Map<number, number> }> {
  const tlsd = await startTlsd(t, { identity: server, command, env: quietSyslog, ...more, options: [...TWO_WORKERS, ...options] });
  return { tlsd, pids: await startedWorkers(tlsd) };
}

/** Ends each peer's side and stops tlsd with SIGTERM; it exits 0, having logged what it counted. */
async function shutDown(t: Test, tlsd: RunningTlsd, peers: readonly Held[]): Promise<void> {
  const stderrClosed = once(tlsd.proc, 'close');
  for (const peer of peers) peer.socket.end();
  tlsd.proc.kill('SIGTERM');
  t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits on SIGTERM'), 0, 'tlsd stops, exit status 0');
  await withDeadline(stderrClosed, 5_000, "tlsd's stderr ends");
}

/** Waits (bounded) until `count()` reaches `expected`, then a moment more for any extra to show: the count. */
async function countSettles(count: () => number, expected: number, ms = 10_000): Promise<number> {
  await eventually(() => count() >= expected, ms);
  await sleep(200);
  return count();
}

/** Ends each peer's side (its child sees EOF and leaves), and waits until tlsd counts `left` peers and no handshake. */
async function release(t: Test, tlsd: RunningTlsd, peers: readonly Held[], left = 0): Promise<void> {
  for (const peer of peers) peer.socket.end();
  t.same(await settledStatus(tlsd, { peers: left, handshakes: 0 }, 15_000), { peers: left, handshakes: 0 }, `tlsd counts ${left} peer(s) once they left`);
}

t.test('limits are the whole daemon\'s, exact across two workers', async (t) => {
  t.test('--max-peers 50, a burst of 200: 50 served (by both workers), 150 refused; afterwards 50 again', async (t) => {
    const { tlsd } = await startWorkers(t, ['--max-peers', '50', ...patient]);
    const first = await burst(t, 200, tlsd.port, aliceKeys);
    t.same(outcomes(first), { served: 50, refused: 150, hung: 0 }, 'exactly 50 peers get their child\'s line; the others are closed');
    const pids = served(first).map(childPid);
    t.equal(new Set(pids).size, 50, 'each from a child of its own');
    const startedLines = (): number[] => [...tlsd.stderr().matchAll(/: started child (\d+)$/gm)].map((m) => Number(m[1]));
    await countSettles(() => startedLines().length, 50);
    const started = startedLines();
    t.same(started.sort((a, b) => a - b), [...pids].sort((a, b) => a - b), 'and no child started for a refused peer');
    const workers = await spread(tlsd, served(first));
    t.ok((workers.get(1) ?? 0) > 0 && (workers.get(2) ?? 0) > 0, `both workers served some: ${JSON.stringify([...workers])}`);

    await release(t, tlsd, served(first));
    const second = await burst(t, 51, tlsd.port, aliceKeys);
    t.same(outcomes(second), { served: 50, refused: 1, hung: 0 }, 'once they left, 50 new peers are served, and the 51st refused');
    // Of a flood of refusals the first 50 are logged in full, the rest counted in a summary: at
    // the end of its 10 s interval, or at shutdown, which this test does not wait for.
    await shutDown(t, tlsd, second);
    t.equal(refusalsLogged(tlsd.stderr(), /connection refused: peer limit reached \(50\)/), 151, 'each refusal logged, or counted in a summary, once');
  });

  t.test('--max-per-ip 10: 30 at once from 127.0.0.2, 10 served; 127.0.0.1 still served; afterwards 10 again', async (t) => {
    const { tlsd } = await startWorkers(t, ['--max-per-ip', '10', ...patient]);
    const [two, one] = await Promise.all([burst(t, 30, tlsd.port, aliceKeys, { from: '127.0.0.2' }), burst(t, 10, tlsd.port, aliceKeys, { from: '127.0.0.1' })]);
    t.same(outcomes(two), { served: 10, refused: 20, hung: 0 }, '127.0.0.2: 10 served, 20 refused');
    t.same(outcomes(one), { served: 10, refused: 0, hung: 0 }, '127.0.0.1: all 10 served meanwhile');
    const workers = await spread(tlsd, [...served(two), ...served(one)]);
    t.ok((workers.get(1) ?? 0) > 0 && (workers.get(2) ?? 0) > 0, `both workers served some: ${JSON.stringify([...workers])}`);
    t.equal(await countSettles(() => refusalsLogged(tlsd.stderr(), /connection refused: too many connections from 127\.0\.0\.2 \(10\)/), 20), 20, 'each refusal logged, with the address');
    t.notMatch(tlsd.stderr(), /too many connections from 127\.0\.0\.1/, 'none for 127.0.0.1');

    await release(t, tlsd, served(two), 10);
    const again = await burst(t, 11, tlsd.port, aliceKeys, { from: '127.0.0.2' });
    t.same(outcomes(again), { served: 10, refused: 1, hung: 0 }, 'once they left, 10 from 127.0.0.2 are served again, the 11th refused');
  });

  t.test('--max-handshakes 20: of 200 silent connections 20 are pending, never more; afterwards 20 again', async (t) => {
    const { tlsd } = await startWorkers(t, ['--max-handshakes', '20', ...patient]);
    const connecting = Promise.all(Array.from({ length: 200 }, () => rawConnect(t, tlsd.port)));
    const seen: number[] = [];
    seen.push((await statusOf(tlsd)).handshakes); // while the burst arrives
    const sockets = await connecting;
    const watches = sockets.map((socket) => watchClose(socket));
    const closed = (): number => watches.filter((w) => w.closed).length;
    const deadline = Date.now() + 15_000;
    while (closed() < 180 && Date.now() < deadline) seen.push((await statusOf(tlsd)).handshakes);
    t.equal(closed(), 180, '180 connections are closed by tlsd');
    seen.push((await statusOf(tlsd)).handshakes);
    t.ok(
      seen.every((n) => n <= 20),
      `never more than 20 handshakes in progress: ${seen.join(' ')}`,
    );
    t.same(await settledStatus(tlsd, { peers: 0, handshakes: 20 }), { peers: 0, handshakes: 20 }, 'SIGUSR1: 20 handshake(s) in progress');
    await sleep(300);
    t.equal(closed(), 180, 'the other 20 stay open, waiting for their handshake');

    // Fair eviction, the daemon's: another address finds room by taking one of 127.0.0.1's.
    const other = await holdPeer(t, tlsd.port, aliceKeys, { from: '127.0.0.2' });
    t.equal(other.outcome, 'served', 'a client from 127.0.0.2 gets its child while 127.0.0.1 holds every slot');
    other.socket.write('from elsewhere\n');
    t.equal(await readUntil(other.socket, 'from elsewhere\n'), 'from elsewhere\n', 'and is echoed');
    await tlsd.waitFor(new RegExp(`handshake evicted to make room for ${escapeRegExp(other.label)}`));
    t.equal(closed(), 181, 'one pending handshake of 127.0.0.1 gave its slot up');
    other.socket.end();

    for (const socket of sockets) socket.destroy();
    t.same(await settledStatus(tlsd, { peers: 0, handshakes: 0 }), { peers: 0, handshakes: 0 }, 'once they are gone, no handshake is counted');
    const again = await Promise.all(Array.from({ length: 21 }, () => rawConnect(t, tlsd.port)));
    const againWatches = again.map((socket) => watchClose(socket));
    await waitUntil(() => againWatches.some((w) => w.closed), 'one of 21 new silent connections is refused', tlsd);
    await sleep(300);
    t.equal(againWatches.filter((w) => w.closed).length, 1, '20 new ones are pending again, the 21st refused');
    for (const socket of again) socket.destroy();
    await shutDown(t, tlsd, []);
    t.equal(refusalsLogged(tlsd.stderr(), /connection refused: too many handshakes in progress \(20\)/), 181, 'each refusal logged, or counted in a summary, once');
  });
});

t.test('"host port" lines on stdin are dialed once each', async (t) => {
  const marks = tempDir();
  const env = { ...quietSyslog, MARKS: marks };
  const acceptor = await startTlsd(t, { identity: bob, command: ['sh', '-c', 'echo "$$" >>"$MARKS/accepted"; exec cat'], env });
  const { tlsd } = await startWorkers(t, [], ['sh', '-c', 'echo "$$" >>"$MARKS/dialed"; exec cat'], { stdin: 'pipe', env });
  const lines = (name: string): string[] => (existsSync(join(marks, name)) ? readFileSync(join(marks, name), 'utf8').split('\n').filter(Boolean) : []);
  tlsd.proc.stdin!.write(`127.0.0.1 ${acceptor.port}\n`.repeat(20));
  await waitUntil(() => lines('dialed').length >= 20 && lines('accepted').length >= 20, '20 sessions on each side', tlsd, 20_000).catch(() => {});
  await sleep(1_000); // a line dialed twice would show by now
  t.equal(countMatches(acceptor.stderr(), /: connected as SERVER, /), 20, 'exactly 20 connections arrive');
  t.equal(lines('accepted').length, 20, "the listening side's child ran 20 times");
  t.equal(new Set(lines('dialed')).size, 20, "each dialing session's child ran once");
  t.equal(lines('dialed').length, 20, 'and no more');
  const dialers = [...tlsd.stderr().matchAll(logLine(`worker (\\d+): 127\\.0\\.0\\.1:${acceptor.port}: connected as CLIENT, .*`, 'gm'))].map((m) => Number(m[1]));
  t.equal(dialers.length, 20, 'each logged by the worker that dialed it');
  t.comment(`dialed by worker 1: ${dialers.filter((n) => n === 1).length}, worker 2: ${dialers.filter((n) => n === 2).length}`);
  t.equal(countMatches(tlsd.stderr(), new RegExp(`Connecting to 127\\.0\\.0\\.1, port ${acceptor.port}$`, 'm')), 20, 'one Connecting line per stdin line');
  tlsd.proc.stdin!.end();
});

t.test('SIGHUP reloads every worker; a failed reload keeps the old identity in every worker', async (t) => {
  const dir = tempDir();
  const live = liveIdentity(dir);
  live.install(server);
  const next = makeIdentity(dir, 'next');
  const { tlsd } = await startWorkers(t, [], HOLDS, { identity: { key: live.key, cert: live.cert, fingerprint: server.fingerprint } });
  const before = await burst(t, 4, tlsd.port, aliceKeys);
  t.same(outcomes(before), { served: 4, refused: 0, hung: 0 });
  t.same([...new Set(before.map((peer) => peer.shown))], [server.fingerprint], 'before: the first certificate');

  /** Eight new peers held at once, so that both workers serve some: the certificates they saw. */
  const eight = async (what: string): Promise<Array<string | undefined>> => {
    const peers = await burst(t, 8, tlsd.port, aliceKeys);
    t.same(outcomes(peers), { served: 8, refused: 0, hung: 0 }, `${what}: 8 new peers served`);
    const workers = await spread(tlsd, peers);
    t.ok((workers.get(1) ?? 0) > 0 && (workers.get(2) ?? 0) > 0, `${what}: by both workers: ${JSON.stringify([...workers])}`);
    return peers.map((peer) => peer.shown);
  };

  live.install(next);
  tlsd.proc.kill('SIGHUP');
  await tlsd.waitFor(logLine(`Reloaded key and certificate, SHA256 ${next.fingerprint}`));
  t.same(await eight('after the reload'), new Array(8).fill(next.fingerprint), 'every new connection, on either worker, sees the new certificate');
  await sleep(300);
  t.equal(countMatches(tlsd.stderr(), /Reloaded key and certificate/), 1, 'Reloaded is logged once, not per worker');
  const open = before[0]!.socket;
  open.write('still\n');
  t.equal(await readUntil(open, 'still\n'), 'still\n', 'a connection from before goes on');

  writeFileSync(live.cert, 'garbage\n');
  tlsd.proc.kill('SIGHUP');
  await tlsd.waitFor(logLine(`Kept the old key and certificate, SHA256 ${next.fingerprint}`));
  t.same(await eight('after a failed reload'), new Array(8).fill(next.fingerprint), 'every worker keeps the last good certificate');
  await sleep(300);
  t.equal(countMatches(tlsd.stderr(), /Failed to load key or certificate: /), 1, 'Failed to load is logged once');
  t.match(tlsd.stderr(), logLine(`Failed to load key or certificate: Cannot use certificate file ${escapeRegExp(live.cert)}: no start line.*`), 'it says why');
  t.equal(countMatches(tlsd.stderr(), /Kept the old key and certificate/), 1, 'Kept the old is logged once');
  t.equal(countMatches(tlsd.stderr(), /Reloaded key and certificate/), 1, 'and no worker says it reloaded');
});

t.test('SIGUSR1: one Status line with the totals, one row per peer of each worker', async (t) => {
  const { tlsd } = await startWorkers(t, []);
  const peers = await burst(t, 4, tlsd.port, aliceKeys);
  t.same(outcomes(peers), { served: 4, refused: 0, hung: 0 });
  const workerOfPeer = new Map<Held, number>();
  for (const peer of peers) workerOfPeer.set(peer, await workerOf(tlsd, peer.label));
  t.same([...new Set(workerOfPeer.values())].sort(), [1, 2], 'the 4 peers are spread over both workers');

  const seen = tlsd.stderr().length;
  tlsd.proc.kill('SIGUSR1');
  await tlsd.waitFor(logLine('Status: 4 peer\\(s\\), 0 handshake\\(s\\) in progress'));
  for (const peer of peers) {
    const row = `worker ${workerOfPeer.get(peer)}: SERVER ${escapeRegExp(peer.label)} SHA256 ${alice.fingerprint}, child ${childPid(peer)}, \\d+ bytes in, \\d+ bytes out, \\d+ s`;
    await tlsd.waitFor(logLine(row), 5_000);
  }
  await sleep(300);
  const table = tlsd.stderr().slice(seen);
  t.equal(countMatches(table, /Status: /), 1, 'one Status line');
  const rows = table.split('\n').filter((line) => / SERVER 127\.0\.0\.1:\d+ /.test(line));
  t.equal(rows.length, 4, `4 rows:\n${table}`);
  t.same(rows.map((row) => /^[^:]+: (worker [12]): /.exec(row)?.[1]).sort(), ['worker 1', 'worker 1', 'worker 2', 'worker 2'], 'each row says its worker');
  t.ok(table.indexOf('Status: ') < table.indexOf(rows[0]!), 'the Status line comes first');
});

// Echoes; marks the end of its stdin with cat's status (0: EOF), and the -s signal HUP, in $MARKS.
const MARKS_EOF_AND_HUP =
  'trap \'echo hup >"$MARKS/hup.$$"\' HUP; echo "child $$"; cat; echo "eof $?" >"$MARKS/eof.$$"; i=0; while [ ! -e "$MARKS/hup.$$" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done';

t.test('a worker killed with SIGKILL: logged, replaced; its children get EOF and -s; the other worker goes on; the limits count', async (t) => {
  const marks = tempDir();
  const { tlsd, pids } = await startWorkers(t, ['--max-peers', '6', '-s', 'HUP', ...patient], ['sh', '-c', MARKS_EOF_AND_HUP], { env: { ...quietSyslog, MARKS: marks } });
  const peers = await burst(t, 6, tlsd.port, aliceKeys);
  t.same(outcomes(peers), { served: 6, refused: 0, hung: 0 });
  const byWorker = new Map<number, Held[]>([[1, []], [2, []]]);
  for (const peer of peers) byWorker.get(await workerOf(tlsd, peer.label))!.push(peer);
  const [victims, others] = [byWorker.get(1)!, byWorker.get(2)!];
  t.ok(victims.length > 0 && others.length > 0, `both workers serve some: ${victims.length} and ${others.length}`);

  const pid = pids.get(1)!;
  const victimsEnded = victims.map((peer) => ended(peer.socket));
  const seen = tlsd.stderr().length;
  process.kill(pid, 'SIGKILL');
  await tlsd.waitFor(logLine(`Worker 1 \\(pid ${pid}\\) killed by signal SIGKILL: ${victims.length} session\\(s\\) lost; starting it again`));
  t.pass(`the log says worker 1 died, with its ${victims.length} session(s)`);
  const restarted = await tlsd.waitFor(new RegExp(`Worker 1 \\(pid ${pid}\\) killed[^]*\\n[^:\\n]+: Started worker 1, pid (\\d+)$`, 'm'));
  t.not(Number(restarted[1]), pid, `and that it started worker 1 again, pid ${restarted[1]}`);
  t.ok(await processGone(pid), 'the killed worker is gone');

  for (const peer of victims) {
    const child = childPid(peer);
    t.equal(await fileOrNothing(join(marks, `eof.${child}`)), 'eof 0\n', `child ${child} of the killed worker got EOF on stdin`);
    t.equal(await fileOrNothing(join(marks, `hup.${child}`)), 'hup\n', `and the -s signal, HUP`);
  }
  await withDeadline(Promise.all(victimsEnded), 10_000, "the killed worker's peers see their connections end");
  for (const peer of others) {
    peer.socket.write('still here\n');
    t.equal(await readUntil(peer.socket, 'still here\n'), 'still here\n', `${peer.label} on worker 2 still echoes`);
    t.notOk(existsSync(join(marks, `eof.${childPid(peer)}`)), 'its child saw no EOF');
  }

  // The slots of the lost sessions are free again, and only those.
  const fresh = await burst(t, victims.length + 1, tlsd.port, aliceKeys);
  t.same(outcomes(fresh), { served: victims.length, refused: 1, hung: 0 }, `--max-peers 6: ${victims.length} new peers served, one more refused`);
  const replacement = await countSettles(() => countMatches(tlsd.stderr().slice(seen), /: worker 1: 127\.0\.0\.1:\d+: connected as SERVER, /), 1);
  t.ok(replacement > 0, `the new worker 1 serves (${replacement} of them)`);
  t.equal(await countSettles(() => countMatches(tlsd.stderr(), /connection refused: peer limit reached \(6\)/), 1), 1, 'the refusal is logged');
});

/** A file a child writes, once complete (ends in a newline), or '' after `ms`. */
async function fileOrNothing(path: string, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
    if (text.endsWith('\n') || Date.now() > deadline) return text;
    await sleep(50);
  }
}

t.test('SIGTERM drains every worker and exits 0; a second SIGTERM kills and exits 1', async (t) => {
  t.test('drain', async (t) => {
    const marks = tempDir();
    // The child outlives EOF a little and still writes: tlsd must wait, and deliver it.
    const script = 'echo "child $$"; cat >/dev/null; sleep 0.3; echo bye; echo eof >"$MARKS/eof-$$"';
    const { tlsd, pids } = await startWorkers(t, [], ['sh', '-c', script], { env: { ...quietSyslog, MARKS: marks } });
    const peers = await burst(t, 4, tlsd.port, aliceKeys);
    t.same(outcomes(peers), { served: 4, refused: 0, hung: 0 });
    const workers = await spread(tlsd, peers);
    t.same([...workers.keys()].sort(), [1, 2], 'on both workers');
    const replies = peers.map((peer) => readAll(peer.socket, 10_000));
    tlsd.proc.kill('SIGTERM');
    await tlsd.waitFor(/Terminating gracefully/);
    t.same((await withDeadline(Promise.all(replies), 10_000, 'what children write after EOF arrives')).map(String), new Array(4).fill('bye\n'), 'every child saw EOF, and what it wrote after arrived');
    t.equal(await tcpAttempt(tlsd.port), 'ECONNREFUSED', 'new connections are refused');
    for (const peer of peers) peer.socket.end();
    t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits'), 0, 'exit status 0');
    t.equal(markers(marks, 'eof-').length, 4, 'all 4 children finished before tlsd exited');
    for (const [n, pid] of pids) t.ok(await processGone(pid), `worker ${n} is gone`);
  });

  t.test('a second SIGTERM', async (t) => {
    // Ignores the signals and never reads: nothing but SIGKILL ends it (exec keeps one pid).
    const script = 'trap "" TERM INT HUP; echo "child $$"; exec sleep 30 </dev/null';
    const { tlsd, pids } = await startWorkers(t, ['-s', 'TERM'], ['sh', '-c', script]);
    const peers = await burst(t, 4, tlsd.port, aliceKeys);
    t.same(outcomes(peers), { served: 4, refused: 0, hung: 0 });
    t.same([...(await spread(tlsd, peers)).keys()].sort(), [1, 2], 'on both workers');
    const children = peers.map(childPid);
    t.teardown(() => {
      for (const child of children) {
        try {
          process.kill(child, 'SIGKILL');
        } catch {
          // gone, as it should be
        }
      }
    });
    tlsd.proc.kill('SIGTERM');
    for (const child of children) await tlsd.waitFor(new RegExp(`Waiting for process ${child} to exit$`, 'm'));
    const early = await Promise.race([tlsd.exited.then(() => 'exited'), sleep(500).then(() => 'waiting')]);
    t.equal(early, 'waiting', 'tlsd waits for the children');
    const sent = Date.now();
    tlsd.proc.kill('SIGTERM');
    t.equal(await withDeadline(tlsd.exited, 5_000, 'tlsd exits after the second SIGTERM'), 1, 'exit status 1');
    t.ok(Date.now() - sent < 2_000, `at once (${Date.now() - sent} ms)`);
    for (const child of children) t.ok(await processGone(child), `child ${child} is killed`);
    for (const [n, pid] of pids) t.ok(await processGone(pid), `worker ${n} is gone`);
  });
});
