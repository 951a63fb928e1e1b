import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import t, { type Test } from 'tap';
import { peerIdentity, tally, visit, type PeerIdentity, type Visit } from './lib/echo-peer.js';
import { exampleEnv, exampleFile, freePort, runCommand, scratch, within } from './lib/examples.js';

// examples/cluster end to end, with the real HAProxy (Debian's package) in front of two tlsd hosts
// on one machine: 127.0.0.10 the balancer, 127.0.0.11 and .12 the hosts, each peer from its own
// 127.0.x.y. The scripts run as the README runs them; the test reads their logs and pid files.

const BALANCER = '127.0.0.10';

t.test('examples/cluster: HAProxy, send-proxy-v2, two tlsd hosts', async (t) => {
  // Not a skip: the example is only proved with the real balancer.
  for (const tool of ['haproxy', 'socat']) {
    if (spawnSync(tool, ['-V'], { stdio: 'ignore' }).error) {
      t.fail(`${tool} is not installed: .ci/run installs it (apt-get install ${tool})`);
      return;
    }
  }
  const dir = scratch(t, 'cluster-test-');
  const run = join(dir, 'run');
  const port = await freePort();
  const env = { ...exampleEnv(dir), CLUSTER_RUN: run, CLUSTER_PORT: String(port), DRAIN_SECONDS: '30' };
  const cluster = exampleFile('cluster', 'cluster.sh');
  const pidOf = (name: string): number | undefined => (existsSync(join(run, `${name}.pid`)) ? Number(readFileSync(join(run, `${name}.pid`), 'utf8')) : undefined);
  const alive = (pid: number | undefined): boolean => {
    if (pid === undefined) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const logOf = (name: string): string => (existsSync(join(run, `${name}.log`)) ? readFileSync(join(run, `${name}.log`), 'utf8') : '');
  const script = async (t: Test, command: string, ms: number): Promise<string> => {
    const done = await runCommand(t, cluster, [command], { env }).finished(ms);
    t.equal(done.code, 0, `cluster.sh ${command}: ${done.stderr}`);
    return done.stdout.toString();
  };
  t.teardown(async () => {
    await runCommand(t, cluster, ['stop'], { env })
      .finished(60_000)
      .catch(() => undefined);
    // Whatever did not stop: the processes the scripts started, by their pid files.
    for (const name of ['balancer', 'host1', 'host2']) if (alive(pidOf(name))) process.kill(pidOf(name)!, 'SIGKILL');
  });

  const started = await script(t, 'start', 60_000);
  const fingerprint = /fingerprint ([0-9a-f]{64})/.exec(started)?.[1];
  t.ok(fingerprint, `cluster.sh start names the cluster's fingerprint: ${started}`);
  const peers = await Promise.all(Array.from({ length: 200 }, (_, i) => peerIdentity(`peer${i}`)));
  const figures: string[] = [];

  await t.test('200 peers at once: each served by one host, each child sees its own address and fingerprint', async (t) => {
    const visits = await within(
      Promise.all(peers.map((identity, i) => visit({ host: BALANCER, port, from: `127.0.1.${i + 1}`, identity, serverFingerprint: fingerprint }))),
      90_000,
      () => 'the 200 peers',
    );
    const result = tally(visits);
    t.same(result.failures, [], 'none hung, none lost a byte');
    t.equal(result.served, 200, 'all 200 served');
    const wrong = visits.filter((v, i) => v.header[1] !== `127.0.1.${i + 1}` || v.header[2] !== String(v.localPort) || v.header[3] !== peers[i]!.fingerprint);
    t.same(
      wrong.map((v) => v.header.join(' ')),
      [],
      "every child's TCPREMOTEIP, TCPREMOTEPORT and SHA256 are its own peer's, not the balancer's",
    );
    t.ok((result.byHost.host1 ?? 0) > 0 && (result.byHost.host2 ?? 0) > 0, `leastconn used both hosts: ${JSON.stringify(result.byHost)}`);
    t.equal((result.byHost.host1 ?? 0) + (result.byHost.host2 ?? 0), 200, 'each peer by one host');
    const connected = (name: string): number => (logOf(name).match(/127\.0\.1\.\d+:\d+ via 127\.0\.0\.10:\d+: connected as SERVER/g) ?? []).length;
    t.equal(connected('host1') + connected('host2'), 200, 'the hosts log each peer as client via balancer');
    t.notMatch(logOf('host1') + logOf('host2'), /connection refused|TLS handshake has failed/, "HAProxy's health checks (v2 LOCAL) cost the hosts' logs nothing");
    figures.push(`200 peers at once: ${result.served} served (host1 ${result.byHost.host1}, host2 ${result.byHost.host2}), ${result.refused} refused, ${result.checked} bytes checked`);
  });

  await t.test('host1 stopped gracefully while sessions run: its sessions finish, new peers go to host2, host2 notices nothing', async (t) => {
    const held = await within(Promise.all(peers.slice(0, 40).map((identity, i) => hold(identity, `127.0.2.${i + 1}`))), 60_000, () => '40 sessions');
    const on = (host: string): Held[] => held.filter((h) => h.host === host);
    t.ok(on('host1').length > 0 && on('host2').length > 0, `sessions on both hosts: host1 ${on('host1').length}, host2 ${on('host2').length}`);
    const host1 = pidOf('host1')!;
    process.kill(host1, 'SIGTERM');
    // New peers from now on, while HAProxy's checks have not yet noticed, and after.
    const during: Visit[] = [];
    let stopChecking = false;
    const checks = (async () => {
      for (let i = 0; i < 100 && !stopChecking; i++) {
        during.push(await visit({ host: BALANCER, port, from: `127.0.3.${(i % 250) + 1}`, identity: peers[100 + (i % 100)]!, serverFingerprint: fingerprint }));
      }
    })();
    const down = async (): Promise<boolean> => /^host1 DOWN /m.test((await runCommand(t, cluster, ['status'], { env }).finished(20_000)).stdout.toString());
    const deadline = Date.now() + 30_000;
    while (!(await down()) && Date.now() < deadline) await sleep(200);
    t.ok(await down(), "HAProxy's checks took host1 out");
    const afterDown: Visit[] = [];
    for (let i = 0; i < 20; i++) afterDown.push(await visit({ host: BALANCER, port, from: `127.0.3.${200 + i}`, identity: peers[60 + i]!, serverFingerprint: fingerprint }));
    stopChecking = true;
    await checks;
    const afterResult = tally(afterDown);
    t.same(afterResult.byHost, { host2: 20 }, 'once host1 is out, every new peer is served by host2');
    const duringResult = tally(during);
    t.same(duringResult.failures, [], 'peers that came while the checks caught up: none hung, none lost a byte');
    t.notOk(duringResult.byHost.host1, 'none of them reached the stopping host1');

    // host1's sessions: the child saw end of file at shutdown; all it echoed arrived, then the end.
    const finished1 = await within(Promise.all(on('host1').map((h) => h.ended())), 30_000, () => "host1's sessions end");
    t.same(finished1.filter((r) => !r.ok).map((r) => r.detail), [], "every session on host1 finished with all its bytes and a clean end");
    // host2's sessions go on as if nothing happened: more data, then the whole echo.
    const finished2 = await within(Promise.all(on('host2').map((h) => h.finish())), 30_000, () => "host2's sessions finish");
    t.same(finished2.filter((r) => !r.ok).map((r) => r.detail), [], 'every session on host2 went on and got all its bytes back');
    const deadlineExit = Date.now() + 20_000;
    while (alive(host1) && Date.now() < deadlineExit) await sleep(100);
    t.notOk(alive(host1), 'host1 exited once its sessions were over');
    t.match(logOf('host1'), /Terminating gracefully[^]*Shutting down$/m, 'host1 shut down gracefully');
    const bytes = [...finished1, ...finished2].reduce((sum, r) => sum + r.bytes, 0) + duringResult.checked + afterResult.checked;
    figures.push(
      `host1 stopped with ${on('host1').length} sessions on it (host2 ${on('host2').length}): all ${held.length} finished intact; ` +
        `${during.length + afterDown.length} new peers: ${duringResult.served + afterResult.served} served by host2, ${duringResult.refused + afterResult.refused} refused; ${bytes} bytes checked`,
    );
    await script(t, 'start', 60_000); // host1 back for what follows
  });

  await t.test('a rolling restart of both hosts with peers connecting throughout: none hangs, no byte lost', async (t) => {
    const visits: Visit[] = [];
    let restarting = true;
    const load = Promise.all(
      Array.from({ length: 6 }, async (_, worker) => {
        for (let i = 0; restarting && i < 2000; i++) {
          const n = worker * 40 + (i % 40) + 1;
          visits.push(await visit({ host: BALANCER, port, from: `127.0.4.${n}`, identity: peers[n % 200]!, payload: randomBytes(16_384), serverFingerprint: fingerprint }));
        }
      }),
    );
    await sleep(500);
    const began = Date.now();
    const output = await script(t, 'rolling-restart', 180_000);
    const took = Date.now() - began;
    t.match(output, /host1 restarted\n.*host2 restarted/s, 'cluster.sh rolling-restart restarted host1, then host2');
    await sleep(500);
    restarting = false;
    await within(load, 60_000, () => 'the load ends');
    const result = tally(visits);
    t.same(result.failures, [], 'no peer hung, none lost a byte');
    t.ok(result.served > 0, `${result.served} peers served`);
    t.equal(result.served + result.refused, visits.length, 'every peer was served or refused with a clear close');
    t.equal((logOf('host1').match(/Listening on/g) ?? []).length, 3, 'host1 runs for the third time (start, after the stop, after the restart)');
    t.equal((logOf('host2').match(/Listening on/g) ?? []).length, 2, 'host2 for the second time');
    figures.push(`rolling restart of both hosts under load (${Math.round(took / 1000)} s): ${visits.length} peers, ${result.served} served (host1 ${result.byHost.host1 ?? 0}, host2 ${result.byHost.host2 ?? 0}), ${result.refused} refused, ${result.checked} bytes checked`);
  });

  t.comment(`figures:\n${figures.join('\n')}`);

  /** A session that stays open: its header, then a first payload and its echo. */
  interface Held {
    host: string;
    /** Waits for the server to end it: everything echoed, then a clean end. */
    ended(): Promise<{ ok: boolean; detail: string; bytes: number }>;
    /** Sends more, ends our side, and waits for the whole echo. */
    finish(): Promise<{ ok: boolean; detail: string; bytes: number }>;
  }

  async function hold(identity: PeerIdentity, from: string): Promise<Held> {
    const first = randomBytes(4096);
    const options: ConnectionOptions & { localAddress: string; allowHalfOpen: boolean } = { host: BALANCER, port, localAddress: from, key: identity.key, cert: identity.cert, rejectUnauthorized: false, allowHalfOpen: true };
    const socket: TLSSocket = connect(options);
    t.teardown(() => void socket.destroy());
    let received = Buffer.alloc(0);
    let ended = false;
    let error = '';
    const waiters: Array<() => void> = [];
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      for (const w of waiters.splice(0)) w();
    });
    socket.on('error', (e: Error) => (error = e.message));
    // Once the server has ended its side, so does the peer, as a real client would: the balancer
    // counts the session until both sides are closed.
    const end = new Promise<void>((resolve) =>
      socket.once('end', () => {
        ended = true;
        socket.end();
        resolve();
      }),
    );
    const until = (test: () => boolean): Promise<void> =>
      new Promise((resolve) => {
        const check = (): void => (test() ? resolve() : void waiters.push(check));
        check();
      });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    await until(() => received.includes(0x0a));
    const headerLength = received.indexOf(0x0a) + 1;
    const host = received.subarray(0, headerLength).toString().split(' ')[0]!;
    socket.write(first);
    await until(() => received.length >= headerLength + first.length);
    const verdict = (sent: Buffer): { ok: boolean; detail: string; bytes: number } => {
      const echo = received.subarray(headerLength);
      const ok = ended && error === '' && echo.equals(sent);
      return { ok, detail: `${from} on ${host}: ${echo.length} of ${sent.length} bytes back, ${ended ? 'ended' : 'not ended'}${error ? `, ${error}` : ''}`, bytes: ok ? sent.length : 0 };
    };
    return {
      host,
      async ended() {
        await end;
        return verdict(first);
      },
      async finish() {
        const second = randomBytes(4096);
        socket.end(second);
        await end;
        return verdict(Buffer.concat([first, second]));
      },
    };
  }
});
