import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { freePort } from './lib/examples.js';
import { cast, quietSyslog, withDeadline } from './lib/limits-faults.js';
import { has, NotifySocket, type Notification } from './lib/notify.js';
import { spawnWatched } from './lib/lifecycle.js';
import { bin, startTlsd } from './lib/tlsd.js';
import { burst, HOLDS, keysOf, logLine, outcomes, served, spread, startedWorkers, TWO_WORKERS } from './lib/workers.js';

const { server, alice } = cast(t);
const aliceKeys = keysOf(alice);

const hasCommand = (name: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/** The last STATUS= systemd holds once it has read datagrams up to `upTo` (inclusive). */
function statusAt(received: readonly Notification[], upTo: number): string | undefined {
  return received.slice(0, upTo + 1).filter((n) => n.fields.has('STATUS')).at(-1)?.fields.get('STATUS');
}

t.test('sd_notify with two workers: one READY=1, STATUS= with the total, one RELOADING=1 and READY=1 per reload', async (t) => {
  const notify = new NotifySocket(t);
  const tlsd = await startTlsd(t, {
    identity: server,
    options: TWO_WORKERS,
    command: HOLDS,
    env: { ...quietSyslog, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: undefined, WATCHDOG_PID: undefined },
  });
  await startedWorkers(tlsd);
  const ready = await notify.waitFor(has('READY', '1'), 'READY=1');
  t.equal(ready.index, 0, 'READY=1 is the first message');
  await notify.collect(500);
  t.equal(notify.received.filter(has('READY')).length, 1, 'one READY=1, not one per worker');

  const peers = await burst(t, 4, tlsd.port, aliceKeys);
  t.same(outcomes(peers), { served: 4, refused: 0, hung: 0 });
  t.same([...(await spread(tlsd, peers)).keys()].sort(), [1, 2], 'the 4 peers are on both workers');
  const four = await notify.waitFor(has('STATUS', 'Serving 4 peers'), 'STATUS=Serving 4 peers', ready.index + 1);
  t.pass('STATUS= counts the peers of both workers');

  let from = four.index + 1;
  for (const round of [1, 2]) {
    tlsd.proc.kill('SIGHUP');
    const reloading = await notify.waitFor(has('RELOADING', '1'), `RELOADING=1 of reload ${round}`, from);
    const reready = await notify.waitFor(has('READY', '1'), `READY=1 after reload ${round}`, reloading.index + 1);
    t.equal(statusAt(notify.received, reready.index), 'Serving 4 peers', `reload ${round}: the status still counts every worker's peers`);
    from = reready.index + 1;
  }
  await notify.collect(500);
  const phases = notify.received.filter((n) => n.fields.has('READY') || n.fields.has('RELOADING')).map((n) => (n.fields.has('READY') ? 'READY' : 'RELOADING'));
  t.same(phases, ['READY', 'RELOADING', 'READY', 'RELOADING', 'READY'], 'exactly one RELOADING=1 and one READY=1 per SIGHUP');

  for (const peer of peers) peer.socket.end();
  await notify.waitFor(has('STATUS', 'Serving 0 peers'), 'STATUS=Serving 0 peers once they left', from);
  tlsd.proc.kill('SIGTERM');
  await notify.waitFor(has('STOPPING', '1'), 'STOPPING=1', from);
  t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits'), 0);
  notify.poll();
  t.equal(notify.received.filter(has('STOPPING')).length, 1, 'one STOPPING=1');
});

t.test('WATCHDOG=1 only while every worker is alive: none from a worker\'s death until its replacement started', async (t) => {
  const notify = new NotifySocket(t);
  // Read as systemd does, at once: pings start with the process, and the kernel queues only a few
  // datagrams (net.unix.max_dgram_qlen), so a slow start would otherwise crowd out READY=1.
  const reader = setInterval(() => notify.poll(), 10);
  t.teardown(() => clearInterval(reader));
  const tlsd = await startTlsd(t, {
    identity: server,
    options: TWO_WORKERS,
    command: HOLDS,
    env: { ...quietSyslog, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '200000', WATCHDOG_PID: undefined },
  });
  const pids = await startedWorkers(tlsd);
  const ready = await notify.waitFor(has('READY', '1'), 'READY=1');
  t.equal(ready.index, 0, 'no WATCHDOG=1 before READY=1: not while the workers start');
  await notify.collect(1_200); // a worker that dies within a second of its start is restarted later
  const pings = (from: number, to: number): number => notify.received.filter((n) => has('WATCHDOG', '1')(n) && n.at > from && n.at < to).length;
  t.ok(pings(ready.at, Date.now()) >= 5, 'WATCHDOG=1 about every 100 ms while both workers run');

  const pid = pids.get(2)!;
  process.kill(pid, 'SIGKILL');
  const seen = tlsd.stderr().length;
  await tlsd.waitFor(logLine(`Worker 2 \\(pid ${pid}\\) killed by signal SIGKILL: 0 session\\(s\\) lost; starting it again`));
  const dead = Date.now();
  let started = 0;
  while (started === 0 && Date.now() - dead < 10_000) {
    notify.poll();
    if (/Started worker 2, pid \d+$/m.test(tlsd.stderr().slice(seen))) started = Date.now();
    await sleep(5);
  }
  t.ok(started > 0, 'worker 2 is started again');
  await notify.collect(1_000);
  // A ping on its way as the worker died, or one sent as the new worker said it was ready, may be
  // read a polling interval late or early: 50 ms of margin at each end.
  t.comment(`${started - dead} ms from the death logged to the replacement started`);
  t.equal(pings(dead + 50, started - 50), 0, `no WATCHDOG=1 while worker 2 was down (${started - dead} ms)`);
  t.ok(pings(started, Date.now()) >= 4, 'and again about every 100 ms once it runs');
});

t.test('socket activation: the passed socket is served through both workers', { skip: hasCommand('systemd-socket-activate') ? false : 'systemd-socket-activate is not installed (Debian package systemd)' }, async (t) => {
  const port = await freePort();
  const args = ['-l', `127.0.0.1:${port}`, '-E', 'PATH', '-E', 'TLSD_SYSLOG_SOCKET', bin('tlsd'), '-e', '-k', server.key, '-c', server.cert, ...TWO_WORKERS, '--', ...HOLDS];
  const tlsd = spawnWatched(t, 'systemd-socket-activate', args, { env: quietSyslog });
  await tlsd.waitFor(new RegExp(`Listening on 127\\.0\\.0\\.1:${port} as 3`));
  // The launcher starts tlsd on the first connection, which waits in the socket's backlog meanwhile.
  const first = await burst(t, 1, port, aliceKeys);
  t.same(outcomes(first), { served: 1, refused: 0, hung: 0 }, 'the first connection starts tlsd and is served');
  await startedWorkers(tlsd);
  t.notMatch(tlsd.stderr(), /connection refused/, 'no connection is refused while the workers start');
  t.match(tlsd.stderr(), logLine(`Listening on 127\\.0\\.0\\.1, port ${port}`), 'tlsd serves the passed socket');
  t.notMatch(tlsd.stderr(), /Attempting to bind/, 'and binds nothing');
  const more = await burst(t, 5, port, aliceKeys);
  t.same(outcomes(more), { served: 5, refused: 0, hung: 0 }, 'later connections too');
  t.same([...(await spread(tlsd, served([...first, ...more]))).keys()].sort(), [1, 2], 'by both workers');
  for (const peer of [...first, ...more]) peer.socket.end();
  tlsd.proc.kill('SIGTERM');
  t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits on SIGTERM'), 0);
});

const root = process.getuid?.() === 0;
const nobody = (() => {
  try {
    return execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim() === '65534';
  } catch {
    return false;
  }
})();

t.test('--user nobody with two workers: the primary, the workers and the children run as nobody', { skip: !root ? 'privilege drop needs root (run as uid 0)' : !nobody ? 'no user nobody (65534) here' : false }, async (t) => {
  const command = ['sh', '-c', 'echo "child $$ uid $(id -u)"; exec cat'];
  const tlsd = await startTlsd(t, { identity: server, options: [...TWO_WORKERS, '--user', 'nobody'], command, env: quietSyslog });
  const pids = await startedWorkers(tlsd);
  const peers = await burst(t, 4, tlsd.port, aliceKeys);
  t.same(outcomes(peers), { served: 4, refused: 0, hung: 0 }, 'served');
  t.same([...(await spread(tlsd, peers)).keys()].sort(), [1, 2], 'by both workers');
  t.same(
    peers.map((peer) => /uid (\d+)$/.exec(peer.line)?.[1]),
    ['65534', '65534', '65534', '65534'],
    'every child runs as nobody',
  );
  const uids = /^Uid:\s+65534\s+65534\s+65534\s+65534$/m;
  t.match(readFileSync(`/proc/${tlsd.proc.pid}/status`, 'utf8'), uids, 'the primary runs as nobody: real, effective, saved and fs uid');
  for (const [n, pid] of pids) t.match(readFileSync(`/proc/${pid}/status`, 'utf8'), uids, `worker ${n} too`);
});
