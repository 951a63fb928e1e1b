import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, closeSync, copyFileSync, mkdirSync, openSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { keyValues } from './lib/text.js';
import { connectTls, exchange, readAll } from './lib/client.js';
import { attempt, cast, rawConnect, openFds, quietSyslog, readUntil, withDeadline } from './lib/limits-faults.js';
import { makeIdentity, tempDir, type TestIdentity } from './lib/identity.js';
import { serverFingerprint } from './lib/lifecycle.js';
import { freePort } from './lib/examples.js';
import { has, NotifySocket } from './lib/notify.js';
import { runProgram } from './lib/run.js';
import { bin, startTlsd, watch } from './lib/tlsd.js';
import { builtSpawnHelper } from '../src/package-files.js';

const { server, alice, bob } = cast(t);

/** `ls -l /proc/PID/fd` output as descriptor → target. */
function descriptors(text: string): Map<number, string> {
  const fds = new Map<number, string>();
  for (const match of text.matchAll(/ (\d+) -> (.+)$/gm)) fds.set(Number(match[1]), match[2]!);
  return fds;
}

function hasCommand(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A Uid:/Gid:/Groups: line of /proc/PID/status as its numbers. */
function ids(status: string, field: 'Uid' | 'Gid' | 'Groups'): number[] {
  const line = new RegExp(`^${field}:(.*)$`, 'm').exec(status);
  if (!line) throw new Error(`no ${field}: line in ${JSON.stringify(status)}`);
  return line[1]!.trim().split(/\s+/).filter(Boolean).map(Number);
}

// Each child reports its environment and its descriptors, as the child process sees them.
// `; true` keeps the shell from exec'ing ls, so that the listing is the shell's own descriptors.
const REPORT = ['sh', '-c', 'env; echo "--- fds of $$"; ls -l /proc/$$/fd; true'];

t.test('socket activation', { skip: hasCommand('systemd-socket-activate') ? false : 'systemd-socket-activate is not installed (Debian package systemd)' }, async (t) => {
  t.test('tlsd serves on the passed socket; children get neither the variables nor the descriptor', async (t) => {
    const port = await freePort();
    const args = ['-l', `127.0.0.1:${port}`, '--fdname=tls', '-E', 'PATH', '-E', 'TLSD_SYSLOG_SOCKET', bin('tlsd'), '-e', '-k', server.key, '-c', server.cert, '--', ...REPORT];
    const proc = spawn('systemd-socket-activate', args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...quietSyslog } });
    const launcher = watch(proc);
    t.teardown(async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await launcher.exited;
      }
    });
    await launcher.waitFor(new RegExp(`Listening on 127\\.0\\.0\\.1:${port} as 3`));
    // The launcher starts tlsd on the first connection, which waits in the socket's backlog.
    const reply = (await withDeadline(exchange(port, alice, ''), 15_000, 'the first connection is served')).split('--- fds of ');
    const tlsd = launcher;
    t.match(tlsd.stderr(), new RegExp(`tlsd: Listening on 127\\.0\\.0\\.1, port ${port}\\n`), 'the Listening line names the passed socket');
    const ours = tlsd.stderr().split('\n').filter((line) => line.startsWith('tlsd: '));
    t.same(ours.slice(0, 2), ['tlsd: Initializing', `tlsd: Listening on 127.0.0.1, port ${port}`], 'it starts as the original, without Attempting to bind: it binds nothing');
    t.notMatch(tlsd.stderr(), /Cannot listen/);
    // systemd-socket-activate execs tlsd in place: same pid, so LISTEN_PID was tlsd's own.
    const tlsdFds = openFds(proc.pid!);
    t.match(tlsdFds.get(3), /^socket:/, 'tlsd itself serves descriptor 3');

    const env = keyValues(reply[0]!);
    t.equal(env.get('SHA256'), alice.fingerprint, 'the child is a normal session');
    for (const name of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) t.notOk(env.has(name), `the child has no ${name}`);

    const fds = descriptors(reply[1] ?? '');
    t.match(fds.get(0), /^socket:/, 'stdin is the session pipe');
    t.match(fds.get(1), /^socket:/, 'stdout is the session pipe');
    // Node's stdio pipes are socket pairs: the child's stderr is tlsd's own, whatever that is.
    t.equal(fds.get(2), tlsdFds.get(2), "stderr is tlsd's stderr");
    t.same([...fds.keys()], [0, 1, 2], 'the child holds 0, 1 and 2 and nothing else: not the passed socket at 3');

    // A second connection on the same passed socket, now that tlsd is up.
    t.equal(keyValues((await exchange(port, bob, '')).split('--- fds of ')[0]!).get('SHA256'), bob.fingerprint, 'later connections are served too');
    proc.kill('SIGTERM');
    t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits on SIGTERM'), 0);
  });

  for (const spawner of ['helper', 'node'] as const) {
  const covered = spawner === 'node';
  t.test(`two passed sockets are both served; with --user too; ${covered ? "with Node's spawn, the child gets /dev/null at 3 and 4" : 'the child holds neither'}`, async (t) => {
    const ports = [await freePort(), await freePort()];
    const drop = process.getuid?.() === 0 ? ['--user', 'nobody'] : [];
    const args = [...ports.flatMap((port) => ['-l', `127.0.0.1:${port}`]), '-E', 'PATH', '-E', 'TLSD_SYSLOG_SOCKET', '-E', 'TLSD_SPAWNER', bin('tlsd'), '-e', '-k', server.key, '-c', server.cert, ...drop, '--', ...REPORT];
    const spawnerEnv = covered ? { TLSD_SPAWNER: 'node' } : {};
    const proc = spawn('systemd-socket-activate', args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...quietSyslog, ...spawnerEnv } });
    const tlsd = watch(proc);
    t.teardown(async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await tlsd.exited;
      }
    });
    await tlsd.waitFor(new RegExp(`Listening on 127\\.0\\.0\\.1:${ports[1]} as 4`));
    for (const port of ports) {
      const [env, fdList] = (await withDeadline(exchange(port, alice, ''), 15_000, `a connection to ${port} is served`)).split('--- fds of ');
      t.match(tlsd.stderr(), new RegExp(`tlsd: Listening on 127\\.0\\.0\\.1, port ${port}\\n`), `a Listening line for ${port}`);
      t.equal(keyValues(env!).get('TCPLOCALPORT'), String(port), `served on ${port}`);
      const fds = descriptors(fdList ?? '');
      if (covered) {
        // Node's spawn cannot close descriptors for the child; these cover the passed sockets.
        t.equal(fds.get(3), '/dev/null');
        t.equal(fds.get(4), '/dev/null');
        t.same([...fds.keys()], [0, 1, 2, 3, 4], 'nothing else');
      } else t.same([...fds.keys()], [0, 1, 2], 'the child holds 0, 1 and 2 only');
    }
    if (drop.length) t.same(ids(readFileSync(`/proc/${proc.pid}/status`, 'utf8'), 'Uid'), [65534, 65534, 65534, 65534], 'tlsd took the sockets as root and runs as nobody');
  });
  }

  t.test('a stale LISTEN_PID (another process) is ignored: tlsd binds, children still lose the variables', async (t) => {
    const stale = { ...quietSyslog, LISTEN_PID: String(process.pid), LISTEN_FDS: '1', LISTEN_FDNAMES: 'stale' };
    const tlsd = await startTlsd(t, { identity: server, command: REPORT, env: stale });
    t.match(tlsd.stderr(), /Listening on 127\.0\.0\.1, port \d+/);
    t.not(tlsd.port, 0);
    const env = keyValues((await exchange(tlsd.port, alice, '')).split('--- fds of ')[0]!);
    t.equal(env.get('SHA256'), alice.fingerprint);
    for (const name of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) t.notOk(env.has(name), `the child has no ${name}`);
  });
});

t.test('sd_notify', async (t) => {
  t.test('READY, STATUS, RELOADING/READY, STOPPING arrive in order; the child never sees NOTIFY_SOCKET', async (t) => {
    const notify = new NotifySocket(t);
    const tlsd = await startTlsd(t, {
      identity: server,
      command: ['sh', '-c', 'echo "NOTIFY_SOCKET=${NOTIFY_SOCKET-unset}"; cat'],
      env: { ...quietSyslog, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: undefined, WATCHDOG_PID: undefined },
    });
    const ready = await notify.waitFor(has('READY', '1'), 'READY=1');
    t.equal(ready.index, 0, 'READY=1 is the first message');
    t.equal(ready.fields.get('STATUS'), 'Serving 0 peers', 'with the status');

    const socket = await connectTls(tlsd.port, alice);
    t.equal(await readUntil(socket, '\n'), 'NOTIFY_SOCKET=unset\n', 'the child does not see NOTIFY_SOCKET');
    const one = await notify.waitFor(has('STATUS', 'Serving 1 peer'), 'STATUS=Serving 1 peer', ready.index + 1);
    const reply = readAll(socket);
    socket.end('bye\n');
    t.equal((await reply).toString(), 'bye\n');
    const zero = await notify.waitFor(has('STATUS', 'Serving 0 peers'), 'STATUS=Serving 0 peers once the peer left', one.index + 1);

    const before = process.hrtime.bigint() / 1000n;
    tlsd.proc.kill('SIGHUP');
    const reloading = await notify.waitFor(has('RELOADING', '1'), 'RELOADING=1', zero.index + 1);
    const after = process.hrtime.bigint() / 1000n;
    const usec = reloading.fields.get('MONOTONIC_USEC') ?? '';
    t.match(usec, /^\d+$/, 'RELOADING=1 comes with MONOTONIC_USEC');
    // CLOCK_MONOTONIC is system-wide: tlsd's reading lies between two of ours.
    t.ok(/^\d+$/.test(usec) && BigInt(usec) >= before && BigInt(usec) <= after, `MONOTONIC_USEC ${usec} is CLOCK_MONOTONIC, between ${before} and ${after}`);
    const reready = await notify.waitFor(has('READY', '1'), 'READY=1 after the reload', reloading.index + 1);
    t.equal(reready.fields.get('STATUS'), 'Serving 0 peers');
    await tlsd.waitFor(/Reloaded key and certificate/);

    tlsd.proc.kill('SIGTERM');
    await notify.waitFor(has('STOPPING', '1'), 'STOPPING=1', reready.index + 1);
    t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd exits'), 0);
    notify.poll();
    t.match(
      notify.texts(),
      [
        'READY=1\nSTATUS=Serving 0 peers',
        'STATUS=Serving 1 peer',
        'STATUS=Serving 0 peers',
        /^RELOADING=1\nMONOTONIC_USEC=\d+$/,
        'READY=1\nSTATUS=Serving 0 peers',
        'STOPPING=1',
      ],
      'exactly these messages, in this order, and no WATCHDOG=1 without WATCHDOG_USEC',
    );
    t.equal(notify.received.length, 6);
  });

  t.test('STATUS= counts the same peers after a reload as before: a dial still in its handshake is none', async (t) => {
    // A TCP server that never answers the ClientHello: the dial to it holds a peer slot, no session.
    const silent = createServer(() => {});
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    t.teardown(() => void silent.close());
    const accepted = once(silent, 'connection');
    const notify = new NotifySocket(t);
    const tlsd = await startTlsd(t, {
      identity: server,
      stdin: 'pipe',
      options: ['--handshake-timeout', '60'],
      command: ['cat'],
      env: { ...quietSyslog, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: undefined, WATCHDOG_PID: undefined },
    });
    const ready = await notify.waitFor(has('READY', '1'), 'READY=1');
    tlsd.proc.stdin!.write(`127.0.0.1 ${(silent.address() as AddressInfo).port}\n`);
    await withDeadline(accepted, 10_000, 'tlsd dials the silent server');
    tlsd.proc.kill('SIGHUP');
    const reready = await notify.waitFor(has('READY', '1'), 'READY=1 after the reload', ready.index + 1);
    t.equal(reready.fields.get('STATUS'), 'Serving 0 peers', 'the dial under way is not counted, as no STATUS= before counted it');
  });

  t.test('WATCHDOG_USEC: WATCHDOG=1 every half period, for tlsd only', async (t) => {
    const notify = new NotifySocket(t);
    const tlsd = await startTlsd(t, {
      identity: server,
      command: ['sh', '-c', 'echo "${NOTIFY_SOCKET-unset} ${WATCHDOG_USEC-unset} ${WATCHDOG_PID-unset}"'],
      env: { ...quietSyslog, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '200000', WATCHDOG_PID: undefined },
    });
    const ready = await notify.waitFor(has('READY', '1'), 'READY=1');
    await notify.collect(1_500);
    const pings = notify.received.slice(ready.index + 1).filter(has('WATCHDOG', '1'));
    t.ok(pings.length >= 3, `at least 3 WATCHDOG=1 within 1.5 s (got ${pings.length})`);
    t.ok(pings.length <= 20, `not a flood: about one per 100 ms (got ${pings.length})`);
    t.equal(await exchange(tlsd.port, alice, ''), 'unset unset unset\n', 'the child sees none of NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID');
  });

  t.test('WATCHDOG_PID of another process: no WATCHDOG=1', async (t) => {
    const notify = new NotifySocket(t);
    await startTlsd(t, {
      identity: server,
      command: ['cat'],
      env: { ...quietSyslog, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) },
    });
    await notify.waitFor(has('READY', '1'), 'READY=1');
    await notify.collect(800);
    t.same(notify.received.filter(has('WATCHDOG')), [], 'the watchdog was meant for someone else');
  });

  t.test('a watchdog period beyond 49 days does not turn into a 1 ms timer', async (t) => {
    const notify = new NotifySocket(t);
    const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: { ...quietSyslog, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '5000000000000', WATCHDOG_PID: undefined } });
    await notify.waitFor(has('READY', '1'), 'READY=1');
    await notify.collect(500);
    const pings = notify.received.filter(has('WATCHDOG', '1')).length;
    t.ok(pings <= 1, `no flood of WATCHDOG=1 for WatchdogSec=58d (got ${pings} in 0.5 s)`);
    t.notMatch(tlsd.stderr(), /TimeoutOverflowWarning/, 'no warning from Node');
  });

  t.test('an abstract NOTIFY_SOCKET (@name): one clear warning, and serving goes on', async (t) => {
    // posix-socket copies addresses with strncpy, so it cannot reach an abstract name; systemd's
    // own NOTIFY_SOCKET is a path (/run/systemd/notify), which the tests above cover.
    const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: { ...quietSyslog, NOTIFY_SOCKET: '@tlsd-test-notify', WATCHDOG_USEC: '100000' } });
    t.equal(await exchange(tlsd.port, alice, 'z\n'), 'z\n', 'serving goes on');
    t.equal(tlsd.stderr().match(/Cannot notify systemd/g)?.length, 1, 'said once');
    t.match(tlsd.stderr(), 'tlsd: Cannot notify systemd at @tlsd-test-notify: abstract socket names are not supported, only paths');
  });

  t.test('without NOTIFY_SOCKET nothing is sent and all goes on; a dead socket is said once', async (t) => {
    const quiet = await startTlsd(t, { identity: server, command: ['cat'], env: { ...quietSyslog, NOTIFY_SOCKET: undefined, WATCHDOG_USEC: '200000' } });
    t.equal(await exchange(quiet.port, alice, 'x\n'), 'x\n');
    quiet.proc.kill('SIGHUP');
    await quiet.waitFor(/Reloaded key and certificate/);
    quiet.proc.kill('SIGTERM');
    t.equal(await withDeadline(quiet.exited, 10_000, 'tlsd exits'), 0);
    t.notMatch(quiet.stderr(), /notify/i);

    const nowhere = join(tempDir(), 'no-such-socket');
    const lost = await startTlsd(t, { identity: server, command: ['cat'], env: { ...quietSyslog, NOTIFY_SOCKET: nowhere, WATCHDOG_USEC: '100000' } });
    t.equal(await exchange(lost.port, alice, 'y\n'), 'y\n', 'serving goes on');
    await lost.waitFor(/Cannot notify systemd/);
    await new Promise((resolve) => setTimeout(resolve, 500));
    t.equal(lost.stderr().match(/Cannot notify systemd/g)?.length, 1, 'one warning, not one per message');
    t.match(lost.stderr(), `Cannot notify systemd at ${nowhere}: ENOENT`);
  });
});

const root = process.getuid?.() === 0;
const NOGROUP = 65534;
/** A whole log line, matched literally. */
const logLine = (text: string): RegExp => new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm');
const nobody = (() => {
  try {
    return execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim() === '65534' && execFileSync('getent', ['group', 'nogroup'], { encoding: 'utf8' }).startsWith('nogroup:x:65534:');
  } catch {
    return false;
  }
})();

t.test('--user/--group', { skip: !root ? 'privilege drop needs root (run as uid 0)' : !nobody ? 'no user nobody (65534) and group nogroup (65534) here' : false }, async (t) => {
  t.test('tlsd and its children run as nobody:nogroup; a root-only key was read before the drop', async (t) => {
    const keys = tempDir();
    const key = join(keys, 'key.pem');
    copyFileSync(server.key, key);
    chmodSync(key, 0o600);
    t.equal(statSync(key).uid, 0, 'the key belongs to root');
    t.equal(statSync(key).mode & 0o777, 0o600, 'and only root may read it');
    const tlsd = await startTlsd(t, {
      identity: { ...server, key },
      options: ['--user', 'nobody', '--group', 'nogroup'],
      command: ['sh', '-c', 'echo "pid $$"; grep -E "^(Uid|Gid|Groups):" /proc/$$/status'],
      env: quietSyslog,
    });
    const child = await exchange(tlsd.port, alice, '');
    t.match(child, /^pid \d+\n/, 'the child ran and answered');
    t.same(ids(child, 'Uid'), [65534, 65534, 65534, 65534], 'the child: real, effective, saved and fs uid are nobody');
    t.same(ids(child, 'Gid'), [65534, 65534, 65534, 65534], 'the child: every gid is nogroup');
    t.notOk(ids(child, 'Groups').includes(0), "the child keeps none of root's supplementary groups");

    const own = readFileSync(`/proc/${tlsd.proc.pid}/status`, 'utf8');
    t.same(ids(own, 'Uid'), [65534, 65534, 65534, 65534], 'tlsd itself runs as nobody');
    t.same(ids(own, 'Gid'), [65534, 65534, 65534, 65534], 'and as nogroup');
    t.notOk(ids(own, 'Groups').includes(0), "with none of root's groups");

    // The key stays root's: a reload now fails, says why, and the old credentials go on serving.
    tlsd.proc.kill('SIGHUP');
    await tlsd.waitFor(/Failed to load key or certificate: .*(permission denied|EACCES)/i);
    t.match(await exchange(tlsd.port, bob, ''), /^pid \d+\n/, 'still serving after the failed reload');
  });

  t.test('the documented set-up (key root:GROUP 0640 in a 0750 root:GROUP directory): a renewal installed as the hooks do it is loaded on SIGHUP', async (t) => {
    // /etc/tlsd/NAME as examples/systemd/README.md makes it, here under a temporary directory that
    // nobody may traverse, as /etc/tlsd.
    const etc = tempDir();
    chmodSync(etc, 0o755);
    const dir = join(etc, 'hello');
    mkdirSync(dir);
    chownSync(dir, 0, NOGROUP);
    chmodSync(dir, 0o750);
    const live = { key: join(dir, 'key.pem'), cert: join(dir, 'cert.pem') };
    // What the certbot and acmetool hooks run, as root.
    const installPair = (identity: TestIdentity): void => {
      execFileSync('install', ['-m', '0640', '-o', 'root', '-g', 'nogroup', identity.key, live.key]);
      execFileSync('install', ['-m', '0644', '-o', 'root', '-g', 'root', identity.cert, live.cert]);
    };
    installPair(server);
    t.equal(statSync(live.key).mode & 0o777, 0o640);
    const renewed = makeIdentity(tempDir(), 'renewed');
    const tlsd = await startTlsd(t, { identity: { ...live, fingerprint: server.fingerprint }, options: ['--user', 'nobody', '--group', 'nogroup'], command: ['cat'], env: quietSyslog });
    t.same(ids(readFileSync(`/proc/${tlsd.proc.pid}/status`, 'utf8'), 'Uid'), [65534, 65534, 65534, 65534], 'tlsd runs as nobody');
    t.notMatch(tlsd.stderr(), /not readable|warning/i, 'no warning at start');

    const open = await connectTls(tlsd.port, alice);
    t.teardown(() => void open.destroy());
    t.equal(serverFingerprint(open), server.fingerprint, 'before: the first certificate');
    open.write('one\n');
    t.equal(await readUntil(open, 'one\n'), 'one\n');

    installPair(renewed);
    tlsd.proc.kill('SIGHUP');
    await tlsd.waitFor(new RegExp(`^tlsd: (Reloaded key and certificate, SHA256 ${renewed.fingerprint}|Failed to load key or certificate: .*)$`, 'm'));
    t.notMatch(tlsd.stderr(), /Failed to load/, 'the reload, as nobody, read the renewed pair');
    const fresh = await connectTls(tlsd.port, bob);
    t.equal(serverFingerprint(fresh), renewed.fingerprint, 'a new connection sees the renewed certificate');
    const reply = readAll(fresh);
    fresh.end('fresh\n');
    t.equal((await reply).toString(), 'fresh\n');
    open.write('two\n');
    t.equal(await readUntil(open, 'two\n'), 'two\n', 'the open connection is untouched');
  });

  /**
   * tlsd as nobody with the pair `live`: the start warns with the first advice; then each reload
   * fails with the next, the old certificate still served, and the advice's own command, run as
   * root, removes that obstacle; after the last, the reload works.
   */
  async function followAdvice(t: Test, live: { key: string; cert: string }, advice: string[]): Promise<void> {
    const tlsd = await startTlsd(t, { identity: { ...live, fingerprint: server.fingerprint }, options: ['--user', 'nobody', '--group', 'nogroup'], command: ['cat'], env: quietSyslog });
    t.match(tlsd.stderr(), logLine(`tlsd: Key file ${live.key} is not readable by user nobody, so a reload (SIGHUP) will fail: ${advice[0]}`), 'the start warns');
    for (const hint of advice) {
      const seen = tlsd.stderr().length;
      tlsd.proc.kill('SIGHUP');
      const failed = await tlsd.waitFor(logLine(`tlsd: Failed to load key or certificate: Cannot read key file ${live.key} as user nobody (EACCES): ${hint}`), 10_000);
      t.ok(tlsd.stderr().indexOf(failed[0]) >= seen, `reload: ${hint.split(' (')[0]}`);
      t.equal(serverFingerprint(await connectTls(tlsd.port, bob)), server.fingerprint, 'the old certificate is still served');
      execFileSync('sh', ['-c', /\(([^()]*)\)$/.exec(failed[0])![1]!]);
    }
    tlsd.proc.kill('SIGHUP');
    await tlsd.waitFor(new RegExp(`^tlsd: Reloaded key and certificate, SHA256 ${server.fingerprint}$`, 'm'));
    t.equal(statSync(live.key).mode & 0o777, 0o640, 'the key ends 0640 root:nogroup, as documented');
    t.equal(statSync(live.key).gid, NOGROUP);
  }

  t.test('a root-only key in a root-only directory: the start warns, a reload says what to change, and doing it makes the reload work', async (t) => {
    const dir = tempDir();
    const live = { key: join(dir, 'key.pem'), cert: join(dir, 'cert.pem') };
    copyFileSync(server.key, live.key);
    chmodSync(live.key, 0o600);
    copyFileSync(server.cert, live.cert);
    chmodSync(live.cert, 0o644);
    await followAdvice(t, live, [
      `make the directory ${dir} searchable by group nogroup (chgrp nogroup ${dir} && chmod g+x ${dir})`,
      `make it readable by group nogroup (chgrp nogroup ${live.key} && chmod 0640 ${live.key})`,
    ]);
  });

  t.test('a key in a directory shared with a group of its own (as /etc/ssl/private, root:ssl-cert 0710): join that group, not chgrp it', async (t) => {
    const dir = tempDir();
    const shared = 12347; // a group nobody is not in: no name needed, usermod takes the number
    chownSync(dir, 0, shared);
    chmodSync(dir, 0o710);
    const live = { key: join(dir, 'key.pem'), cert: join(dir, 'cert.pem') };
    copyFileSync(server.key, live.key);
    copyFileSync(server.cert, live.cert);
    const tlsd = await startTlsd(t, { identity: { ...live, fingerprint: server.fingerprint }, options: ['--user', 'nobody', '--group', 'nogroup'], command: ['cat'], env: quietSyslog });
    tlsd.proc.kill('SIGHUP');
    await tlsd.waitFor(logLine(`tlsd: Failed to load key or certificate: Cannot read key file ${live.key} as user nobody (EACCES): add user nobody to group ${shared}, which may search the directory ${dir} (usermod -a -G ${shared} nobody)`), 10_000);
    t.pass('the advice keeps the shared directory as it is');
  });

  t.test("a key linked into a directory only root may enter (certbot's live/): a reload says to install a copy", async (t) => {
    const etc = tempDir();
    chmodSync(etc, 0o755);
    const source = join(tempDir(), 'privkey.pem');
    copyFileSync(server.key, source);
    const live = { key: join(etc, 'key.pem'), cert: join(etc, 'cert.pem') };
    symlinkSync(source, live.key);
    copyFileSync(server.cert, live.cert);
    chmodSync(live.cert, 0o644);
    await followAdvice(t, live, [
      `it links to ${source}, which that user cannot reach; install a copy readable by group nogroup instead (install -m 0640 -o root -g nogroup ${source} ${live.key})`,
    ]);
  });

  t.test('--user alone takes the group of that user', async (t) => {
    const tlsd = await startTlsd(t, { identity: server, options: ['--user', 'nobody'], command: ['sh', '-c', 'grep -E "^(Uid|Gid):" /proc/$$/status'], env: quietSyslog });
    const child = await exchange(tlsd.port, alice, '');
    t.same(ids(child, 'Uid'), [65534, 65534, 65534, 65534]);
    t.same(ids(child, 'Gid'), [65534, 65534, 65534, 65534], "nobody's primary group");
  });

  for (const spawner of ['helper', 'node'] as const) {
    t.test(`a root-only file tlsd inherited at 300 never reaches a child running as nobody (${spawner === 'node' ? "Node's spawn" : 'spawn helper'})`, async (t) => {
      const secret = join(tempDir(), 'secret');
      writeFileSync(secret, 'root only\n', { mode: 0o600 });
      const fd = openSync(secret, 'r');
      t.teardown(() => closeSync(fd));
      // As `(exec 300<secret; tlsd --user nobody -- bash -c 'cat <&300')` from a root shell.
      const tlsd = await startTlsd(t, {
        identity: server,
        options: ['--user', 'nobody'],
        command: ['bash', '-c', 'cat <&300 2>/dev/null || echo "no descriptor 300"'], // dash takes descriptors 0-9 only
        env: { ...quietSyslog, ...(spawner === 'node' ? { TLSD_SPAWNER: 'node' } : {}) },
        inherit: { 300: fd },
      });
      t.equal(await exchange(tlsd.port, alice, ''), 'no descriptor 300\n', 'the child has no descriptor 300');
      t.notOk(openFds(tlsd.proc.pid!).has(300), 'nor has tlsd, once started');
    });
  }

  t.test('a spawn helper the user may not execute: one line, and children start with Node spawn', async (t) => {
    const privateDir = tempDir();
    t.equal(statSync(privateDir).mode & 0o777, 0o700, "the helper's directory is root's alone");
    const helper = join(privateDir, 'tlsd-spawn-helper');
    copyFileSync(builtSpawnHelper, helper);
    const tlsd = await startTlsd(t, { identity: server, options: ['--user', 'nobody'], command: ['sh', '-c', 'echo "ppid=$PPID"; grep -E "^Uid:" /proc/$$/status'], env: { ...quietSyslog, TLSD_SPAWNER: helper } });
    t.match(tlsd.stderr(), `Cannot start the spawn helper (${helper}): spawn ${helper} EACCES; children start with Node's spawn`);
    const child = await exchange(tlsd.port, alice, '');
    t.equal(Number(/ppid=(\d+)/.exec(child)?.[1]), tlsd.proc.pid, "the child is tlsd's own");
    t.same(ids(child, 'Uid'), [65534, 65534, 65534, 65534], 'and runs as nobody');
  });

  t.test('an unknown user or group: one line, exit 1', async (t) => {
    const user = await runProgram('tlsd', ['-e', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, '--user', 'tlsd-no-such-user', 'cat'], { env: quietSyslog });
    t.equal(user.status, 1);
    t.equal(user.stderr.trimEnd().split('\n').at(-1), 'tlsd: Cannot switch to user tlsd-no-such-user: no such user');
    t.notMatch(user.stderr, /Listening on/, 'checked before the Listening line, which scripts take for "up"');
    const group = await runProgram('tlsd', ['-e', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, '--user', 'nobody', '--group', 'tlsd-no-such-group', 'cat'], { env: quietSyslog });
    t.equal(group.status, 1);
    t.match(group.stderr.trimEnd().split('\n').at(-1), /^tlsd: Cannot switch to group tlsd-no-such-group: /);
    t.notMatch(group.stderr, /Listening on/, 'checked before the Listening line');
  });
});

t.test('--max-per-ip 2: a third connection from one address is refused, other addresses are not', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, options: ['--max-per-ip', '2'], command: ['cat'], env: quietSyslog });
  const open = async (localAddress = '127.0.0.1') => {
    const socket = await connectTls(tlsd.port, alice, { localAddress });
    t.teardown(() => void socket.destroy());
    socket.write('ping\n');
    t.equal(await readUntil(socket, 'ping\n'), 'ping\n', `a connection from ${localAddress} is served`);
    return socket;
  };
  const first = await open();
  await open();
  const third = await attempt(tlsd.port, alice, 'ping\n');
  t.equal(third.data, '', 'the third gets nothing');
  await tlsd.waitFor(new RegExp(`127\\.0\\.0\\.1:${third.localPort}: connection refused: too many connections from 127\\.0\\.0\\.1 \\(2\\)`));
  await open('127.0.0.2');

  const firstPort = first.localPort;
  const gone = readAll(first);
  first.end();
  await gone;
  await tlsd.waitFor(new RegExp(`127\\.0\\.0\\.1:${firstPort}: session ended`));
  await open();

  // A connection still in its handshake holds its slot too.
  const other = await startTlsd(t, { identity: server, options: ['--max-per-ip', '1'], command: ['cat'], env: quietSyslog });
  const silent = await rawConnect(t, other.port);
  const refused = await attempt(other.port, alice, 'ping\n');
  t.notOk(refused.secure, 'a TLS client is turned away while a silent connection from its address is open');
  await other.waitFor(new RegExp(`127\\.0\\.0\\.1:${refused.localPort}: connection refused: too many connections from 127\\.0\\.0\\.1 \\(1\\)`));
  silent.destroy();
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.equal(await exchange(other.port, alice, 'pong\n'), 'pong\n', 'and served once it is gone');
});

t.test('SIGUSR1 logs the status table: one line per peer', async (t) => {
  const aliases = join(tempDir(), 'aliases');
  writeFileSync(aliases, `${alice.fingerprint} alice\n${bob.fingerprint} bob\n`);
  const tlsd = await startTlsd(t, { identity: server, options: ['--aliases', aliases], command: ['cat'], env: quietSyslog });
  const peers: Array<{ name: string; fingerprint: string; port: number; sent: number }> = [];
  for (const [name, identity, sent] of [['alice', alice, 1_000], ['bob', bob, 50_000]] as const) {
    const socket = await connectTls(tlsd.port, identity);
    t.teardown(() => void socket.destroy());
    socket.write('z'.repeat(sent - 1) + '\n');
    await readUntil(socket, '\n');
    await new Promise((resolve) => setTimeout(resolve, 50)); // the rest of the echo
    peers.push({ name, fingerprint: identity.fingerprint, port: socket.localPort!, sent });
  }
  // A TCP connection that never says hello: a handshake in progress.
  await rawConnect(t, tlsd.port);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const started = new Map([...tlsd.stderr().matchAll(/127\.0\.0\.1:(\d+): started child (\d+)/g)].map((m) => [Number(m[1]), Number(m[2])]));

  tlsd.proc.kill('SIGUSR1');
  await tlsd.waitFor(/Status: 2 peer\(s\), 1 handshake\(s\) in progress/);
  const rows = new Map<number, { pid: number; bytesIn: number; bytesOut: number; line: string }>();
  for (const peer of peers) {
    const pattern = new RegExp(`SERVER 127\\.0\\.0\\.1:${peer.port} SHA256 ${peer.fingerprint} \\(${peer.name}\\), child (\\d+), (\\d+) bytes in, (\\d+) bytes out, (\\d+) s`);
    const match = await tlsd.waitFor(pattern, 5_000);
    rows.set(peer.port, { pid: Number(match[1]), bytesIn: Number(match[2]), bytesOut: Number(match[3]), line: match[0] });
    t.equal(Number(match[1]), started.get(peer.port), `${peer.name}: the pid of the child started for it`);
    t.ok(Number(match[4]) < 30, `${peer.name}: an age in seconds`);
  }
  const [a, b] = peers.map((peer) => rows.get(peer.port)!);
  t.ok(a!.bytesIn >= 1_000 && a!.bytesOut >= 1_000, `alice's counts hold the 1000 bytes each way: ${a!.line}`);
  t.ok(b!.bytesIn >= 50_000 && b!.bytesOut >= 50_000, `bob's counts hold the 50000 bytes each way: ${b!.line}`);
  t.ok(b!.bytesIn - a!.bytesIn >= 45_000 && b!.bytesOut - a!.bytesOut >= 45_000, 'the counts follow the data, not just the handshake');
  t.ok(b!.bytesIn < 60_000 && b!.bytesOut < 60_000, 'and not much more than it');
});
