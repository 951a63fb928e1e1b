import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { exchange } from './lib/client.js';
import { clientExit, scratchDir, startClient } from './lib/external.js';
import { makeIdentity, type TestIdentity } from './lib/identity.js';
import { startTlsd, type RunningTlsd } from './lib/tlsd.js';

const ids = scratchDir(t);
const server = makeIdentity(ids, 'server');
const alice = makeIdentity(ids, 'alice');
const bob = makeIdentity(ids, 'bob');
const dialer = makeIdentity(ids, 'dialer');
// Syslog is not what these tests look at: keep the messages on stderr only.
const quietSyslog = { TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log' };

/** Greets the peer with what the child was told about it, then echoes. */
const greetAndEcho = ['sh', '-c', 'echo "$SIDE $SHA256"; exec cat'];

t.test('the fingerprints the tests expect are the ones openssl computes', async (t) => {
  // makeIdentity already uses openssl; this pins the exact pipeline the manual gives.
  for (const identity of [server, alice, dialer]) {
    const shell = execFileSync('sh', ['-c', 'openssl x509 -in "$1" -outform DER | sha256sum | cut -d" " -f1', 'sh', identity.cert], { encoding: 'utf8' }).trim();
    t.equal(identity.fingerprint, shell, `${identity.cert}: the pipeline and makeIdentity agree`);
  }
});

t.test('real clients', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: greetAndEcho, env: quietSyslog });

  t.test('openssl s_client', async (t) => {
    const client = startClient(t, 'openssl', ['s_client', '-quiet', '-key', alice.key, '-cert', alice.cert, '-connect', `127.0.0.1:${tlsd.port}`], { stdin: 'pipe' });
    client.proc.stdin!.write('hello from openssl\n');
    await client.waitForOutput('hello from openssl\n');
    t.equal(client.stdout().toString(), `SERVER ${alice.fingerprint}\nhello from openssl\n`, 'its fingerprint as the child saw it, then the echo');
    // s_client -quiet ignores the end of its input, so it never half-closes; it is stopped instead,
    // and the child must see the end of its input then.
    const ended = countMatches(tlsd.stderr(), /session ended/g) + 1;
    client.proc.kill('SIGTERM');
    await waitUntil(() => countMatches(tlsd.stderr(), /session ended/g) >= ended, 'the session ends once s_client is gone', tlsd);
  });

  t.test('gnutls-cli', async (t) => {
    // Its informational messages go to stdout unless --logfile sends them elsewhere; at the end
    // of its input it half-closes and waits for the rest of the reply.
    const log = join(scratchDir(t), 'gnutls.log');
    const client = startClient(t, 'gnutls-cli', ['--insecure', `--logfile=${log}`, `--x509keyfile=${alice.key}`, `--x509certfile=${alice.cert}`, `--port=${tlsd.port}`, '127.0.0.1'], { stdin: 'pipe' });
    client.proc.stdin!.end('hello from gnutls-cli\n');
    t.same(await clientExit(client), { code: 0, signal: null }, 'gnutls-cli exits with status 0', { stderr: client.stderr() });
    t.equal(client.stdout().toString(), `SERVER ${alice.fingerprint}\nhello from gnutls-cli\n`, 'its fingerprint as the child saw it, then the echo');
  });

  t.test('ncat --ssl', async (t) => {
    const client = startClient(t, 'ncat', ['--ssl', '--ssl-key', alice.key, '--ssl-cert', alice.cert, '127.0.0.1', String(tlsd.port)], { stdin: 'pipe' });
    client.proc.stdin!.end('hello from ncat\n');
    t.same(await clientExit(client), { code: 0, signal: null }, 'ncat exits with status 0', { stderr: client.stderr() });
    t.equal(client.stdout().toString(), `SERVER ${alice.fingerprint}\nhello from ncat\n`, 'its fingerprint as the child saw it, then the echo');
  });
});

function countMatches(text: string, pattern: RegExp): number {
  return text.match(pattern)?.length ?? 0;
}

/** Polls a condition for a bounded time; fails with tlsd's log. */
async function waitUntil(condition: () => boolean, what: string, tlsd: RunningTlsd, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms; log:\n${tlsd.stderr()}`);
    await sleep(50);
  }
}

/** A file a child writes once complete (renamed into place); bounded wait. */
async function fileContents(path: string, tlsd: RunningTlsd): Promise<string> {
  await waitUntil(() => existsSync(path), `${path} appears`, tlsd);
  return readFileSync(path, 'utf8');
}

interface Pair {
  acceptor: RunningTlsd;
  dialer: RunningTlsd;
  /** What the accepting child received: the dialing child's "$SIDE $SHA256". */
  acceptorHeard: string;
  /** What the dialing child received: the accepting child's "$SIDE $SHA256". */
  dialerHeard: string;
}

/**
 * Two tlsd: each child tells the other what it was told ("$SIDE $SHA256") and records what it
 * hears in a file. The dialing child hangs up after one line; the accepting one records until the
 * end of its input, so both directions and both ends are exercised.
 */
async function pairUp(t: Test, acceptorOptions: string[], dialLine: (port: number) => string): Promise<Pair> {
  const out = scratchDir(t);
  const record = (name: string, reader: string): string[] => ['sh', '-c', `echo "$SIDE $SHA256"; ${reader} > "$1.tmp"; mv "$1.tmp" "$1"`, 'sh', join(out, name)];
  const acceptor = await startTlsd(t, { identity: server, options: acceptorOptions, command: record('acceptor', 'cat'), env: quietSyslog });
  const dialing = await startTlsd(t, { identity: dialer, stdin: 'pipe', command: record('dialer', 'head -n 1'), env: quietSyslog });
  dialing.proc.stdin!.write(`${dialLine(acceptor.port)}\n`);
  const dialerHeard = await fileContents(join(out, 'dialer'), dialing);
  const acceptorHeard = await fileContents(join(out, 'acceptor'), acceptor);
  return { acceptor, dialer: dialing, acceptorHeard, dialerHeard };
}

function checkPair(t: Test, pair: Pair): void {
  t.equal(pair.dialerHeard, `SERVER ${dialer.fingerprint}\n`, "the accepting child has SIDE=SERVER and the dialer's fingerprint");
  t.equal(pair.acceptorHeard, `CLIENT ${server.fingerprint}\n`, "the dialing child has SIDE=CLIENT and the acceptor's fingerprint");
}

t.test('two tlsd: one dials a "host port" line from its stdin, the other accepts', async (t) => {
  t.test('127.0.0.1', async (t) => {
    const pair = await pairUp(t, [], (port) => `127.0.0.1 ${port}`);
    checkPair(t, pair);
    await t.resolves(pair.acceptor.waitFor(new RegExp(`connected as SERVER, peer SHA256 ${dialer.fingerprint}`)), 'the acceptor logs the dialer');
    await t.resolves(pair.dialer.waitFor(new RegExp(`connected as CLIENT, peer SHA256 ${server.fingerprint}`)), 'the dialer logs the acceptor');
  });

  t.test('::1, to a tlsd bound with a later -b ::1', async (t) => {
    // startTlsd passes -b 127.0.0.1 first: the last -b wins.
    const pair = await pairUp(t, ['-b', '::1'], (port) => `::1 ${port}`);
    t.match(pair.acceptor.stderr(), /Listening on ::1, port \d+/, 'the last -b wins');
    checkPair(t, pair);
    await t.resolves(pair.dialer.waitFor(new RegExp(`Connecting to ::1, port ${pair.acceptor.port}`)), 'dialed over IPv6');
  });

  t.test('localhost', async (t) => {
    const pair = await pairUp(t, [], (port) => `localhost ${port}`);
    checkPair(t, pair);
    await t.resolves(pair.dialer.waitFor(new RegExp(`Connecting to localhost, port ${pair.acceptor.port}`)), 'dialed by name');
  });
});

t.test('TCP keepalive is on, a minute after silence, on accepted and dialed connections', async (t) => {
  const acceptor = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog });
  const dialing = await startTlsd(t, { identity: dialer, stdin: 'pipe', command: ['cat'], env: quietSyslog });
  dialing.proc.stdin!.write(`127.0.0.1 ${acceptor.port}\n`);
  await acceptor.waitFor(/connected as SERVER/);
  await dialing.waitFor(/connected as CLIENT/);
  // Both ends are tlsd's: the acceptor's socket has the port as source, the dialer's as destination.
  const port = acceptor.port;
  const established = (): string[] => execFileSync('ss', ['-tnoH', 'state', 'established', `( sport = :${port} or dport = :${port} )`], { encoding: 'utf8' }).trim().split('\n');
  // While a segment waits for its ACK, ss shows that timer instead: wait for the quiet.
  let lines = established();
  for (let i = 0; i < 50 && !lines.every((line) => line.includes('keepalive')); i++) {
    await sleep(100);
    lines = established();
  }
  t.equal(lines.length, 2, `one connection, seen from both ends: ${lines.join(' | ')}`);
  for (const line of lines) t.match(line, /timer:\(keepalive,(?:[1-5]?\d(?:\.\d+)?sec|1min)/, `keepalive timer at most a minute away: ${line.replace(/\s+/g, ' ')}`);
});

t.test('-n: a peer without a certificate is served, without SHA256', async (t) => {
  const showIdentity = ['sh', '-c', 'echo "$SIDE ${SHA256-unset}"'];
  // tlsd's own SHA256 must never reach a child as if it were the peer's.
  const env = { ...quietSyslog, SHA256: 'inherited-from-tlsd' };
  const open = await startTlsd(t, { identity: server, options: ['-n'], command: showIdentity, env });
  t.equal(await exchange(open.port, undefined, ''), 'SERVER unset\n', 'no certificate: SHA256 is unset');
  t.equal(await exchange(open.port, alice, ''), `SERVER ${alice.fingerprint}\n`, 'a certificate still gives SHA256');

  const markers = scratchDir(t);
  const strict = await startTlsd(t, { identity: server, command: ['sh', '-c', 'touch "$1/ran-${SHA256:-without-certificate}"; echo served', 'sh', markers], env });
  t.equal(await exchange(strict.port, undefined, ''), '', 'without -n the same peer gets nothing');
  await strict.waitFor(/127\.0\.0\.1:\d+: Peer certificate is required, connection closed/);
  // A peer with a certificate afterwards shows the marker works, and that none came before it.
  t.equal(await exchange(strict.port, alice, ''), 'served\n', 'a peer with a certificate is served');
  t.same(readdirSync(markers), [`ran-${alice.fingerprint}`], 'no child ran for the peer without a certificate');
});

t.test('-d: each new peer certificate is written as DER to DIR/<fingerprint>', async (t) => {
  const der = (identity: TestIdentity): Buffer => execFileSync('openssl', ['x509', '-in', identity.cert, '-outform', 'DER']);

  const certs = scratchDir(t);
  const tlsd = await startTlsd(t, { identity: server, options: ['-d', certs], command: ['echo', 'hi'], env: quietSyslog });
  t.equal(await exchange(tlsd.port, alice, ''), 'hi\n', 'the peer is served');
  t.same(readdirSync(certs), [alice.fingerprint], 'one file, named by the fingerprint');
  t.ok(readFileSync(join(certs, alice.fingerprint)).equals(der(alice)), "the file holds the client's certificate in DER");

  const kept = 'written before tlsd saw bob\n';
  writeFileSync(join(certs, bob.fingerprint), kept);
  t.equal(await exchange(tlsd.port, bob, ''), 'hi\n', 'the peer is served');
  t.equal(readFileSync(join(certs, bob.fingerprint), 'utf8'), kept, 'an existing file is kept unchanged');

  const slashed = scratchDir(t);
  const withSlash = await startTlsd(t, { identity: server, options: ['-d', `${slashed}/`], command: ['echo', 'hi'], env: quietSyslog });
  t.equal(await exchange(withSlash.port, bob, ''), 'hi\n', 'the peer is served');
  t.same(readdirSync(slashed), [bob.fingerprint], 'a trailing slash names the same directory');
  t.ok(readFileSync(join(slashed, bob.fingerprint)).equals(der(bob)));
});
