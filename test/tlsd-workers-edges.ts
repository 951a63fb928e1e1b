import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { readFileSync } from 'node:fs';
import t from 'tap';
import { exchange } from './lib/client.js';
import { liveIdentity, makeIdentity, tempDir } from './lib/identity.js';
import { cast, quietSyslog, rawConnect } from './lib/limits-faults.js';
import { root, startTlsd } from './lib/tlsd.js';

// Cases a review of --workers found: what a silent connection may hold, and a reload that comes
// while a worker is being replaced.

const { server, alice } = cast(t);

// As many silent connections as peer slots: were a slot given with the connection, every peer
// would be refused. The peers come one after the other, and a peer's slot is free once its worker
// has seen it go and told the primary (under load, that can come after the next peer's handshake):
// with three slots, the third peer finds one free even if neither earlier peer's has come back yet.
t.test('silent TCP connections hold no peer slot: real peers are served (--workers 2 --max-peers 3, 3 silent)', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo hello'], env: quietSyslog, options: ['--workers', '2', '--max-peers', '3'] });
  await tlsd.waitFor(/Started worker 2, pid \d+/);
  const silent = await Promise.all([rawConnect(t, tlsd.port), rawConnect(t, tlsd.port), rawConnect(t, tlsd.port)]);
  for (let i = 0; i < 3; i++) t.equal(await exchange(tlsd.port, alice, ''), 'hello\n', `peer ${i + 1} is served while 3 connections sit silent in their handshakes`);
  t.notMatch(tlsd.stderr(), /peer limit reached/, 'nobody was refused for a slot');
  for (const socket of silent) socket.destroy();
});

/** The fingerprint of the certificate a new connection is shown. */
function shown(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, key: readFileSync(alice.key), cert: readFileSync(alice.cert), rejectUnauthorized: false }, () => {
      resolve(socket.getPeerCertificate().fingerprint256.replace(/:/g, '').toLowerCase());
      socket.destroy();
    });
    socket.on('error', reject);
  });
}

t.test('a reload while a worker is being replaced reaches the new worker too', async (t) => {
  const dir = tempDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const live = liveIdentity(dir);
  live.install(server);
  const next = makeIdentity(dir, 'next');
  // A spawn helper that takes a second to start: a worker is up only then, which holds the
  // window between a replacement's fork and its readiness open long enough to reload in.
  const slowHelper = join(dir, 'slow-helper');
  writeFileSync(slowHelper, `#!/bin/sh\nsleep 1\nexec '${root}build/Release/tlsd-spawn-helper' "$@"\n`);
  chmodSync(slowHelper, 0o755);
  const tlsd = await startTlsd(t, {
    identity: { key: live.key, cert: live.cert, fingerprint: server.fingerprint },
    command: ['cat'],
    env: { ...quietSyslog, TLSD_SPAWNER: slowHelper },
    options: ['--workers', '2'],
  });
  const pid = Number((await tlsd.waitFor(/Started worker 1, pid (\d+)/))[1]);
  await tlsd.waitFor(/Started worker 2, pid \d+/);
  process.kill(pid, 'SIGKILL');
  await tlsd.waitFor(/Worker 1 \(pid \d+\) killed by signal SIGKILL/);
  // Worker 1's replacement is forked with the old identity and not yet up: the reload comes now.
  live.install(next);
  tlsd.proc.kill('SIGHUP');
  await tlsd.waitFor(new RegExp(`Reloaded key and certificate, SHA256 ${next.fingerprint}`));
  await tlsd.waitFor(new RegExp(`Started worker 1, pid (?!${pid}\\b)\\d+`), 15_000);
  const seen = new Set<string>();
  for (let i = 0; i < 10; i++) seen.add(await shown(tlsd.port));
  t.same([...seen], [next.fingerprint], 'ten new connections over both workers: every one sees the new certificate');
});

t.test('signals sent to a worker itself (a whole process group, systemctl kill) change nothing; SIGUSR1 opens no inspector', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo hello'], env: quietSyslog, options: ['--workers', '2'] });
  const pid = Number((await tlsd.waitFor(/Started worker 1, pid (\d+)/))[1]);
  await tlsd.waitFor(/Started worker 2, pid \d+/);
  for (const signal of ['SIGUSR1', 'SIGHUP', 'SIGINT', 'SIGTERM'] as const) process.kill(pid, signal);
  for (let i = 0; i < 4; i++) t.equal(await exchange(tlsd.port, alice, ''), 'hello\n', `peer ${i + 1} is served after the signals`);
  t.doesNotThrow(() => process.kill(pid, 0), 'worker 1 is still running');
  t.notMatch(tlsd.stderr(), /Debugger listening|Worker 1 \(pid/, 'no inspector opened, and worker 1 was neither lost nor replaced');
});
