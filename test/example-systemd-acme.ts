import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import t from 'tap';
import { issue, makeCa } from './lib/ca.js';
import { exampleFile, freePort, runCommand, scratch, within } from './lib/examples.js';
import { opensslFingerprint, type TestIdentity } from './lib/identity.js';
import { quietSyslog } from './lib/limits-faults.js';
import { bin, startTlsd } from './lib/tlsd.js';

// The certbot deploy hook of examples/systemd, run for real: Debian's pebble (Let's Encrypt's test
// ACME server) and pebble-challtestsrv (its DNS) on loopback, certbot with --standalone answering
// the http-01 challenge, the hook exactly as the README shows it (paths substituted), and a tlsd
// running as nobody with --ca, as the systemd set-up runs it.

const NAME = 'hello.example.org';
const NOGROUP = 65534;
const isRoot = process.getuid?.() === 0;

t.test('certbot, pebble and the documented deploy hook renew a running tlsd, under load', { skip: isRoot ? false : 'the hook installs files owned by root, as under certbot: run as root (.ci/run does)' }, async (t) => {
  for (const tool of ['pebble', 'pebble-challtestsrv', 'certbot']) {
    if (spawnSync(tool, ['--help'], { stdio: 'ignore' }).error) {
      t.fail(`${tool} is not installed: .ci/run installs it (apt-get install pebble certbot)`);
      return;
    }
  }
  const dir = scratch(t, 'acme-test-');
  chmodSync(dir, 0o755); // tlsd runs as nobody and must reach etc/ below
  const ports = await distinctPorts(6);
  const [acmePort, managementPort, httpPort, tlsPort, dnsPort, challManagementPort] = ports as [number, number, number, number, number, number];

  // Pebble's own HTTPS certificate (the Debian package ships none), from a CA certbot is told to trust.
  const httpsCa = makeCa(dir, 'pebble-https');
  const pebbleWeb = issue(httpsCa, dir, 'pebble-web', { san: 'IP:127.0.0.1,DNS:localhost' });
  const config = join(dir, 'pebble.json');
  writeFileSync(
    config,
    JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${acmePort}`,
        managementListenAddress: `127.0.0.1:${managementPort}`,
        certificate: pebbleWeb.cert,
        privateKey: pebbleWeb.key,
        // Where pebble validates http-01 challenges: certbot --standalone listens there.
        httpPort,
        tlsPort,
        ocspResponderURL: '',
        externalAccountBindingRequired: false,
      },
    }),
  );
  // Every name resolves to 127.0.0.1 (and to no IPv6 address), so pebble finds certbot at hello.example.org.
  runCommand(t, 'pebble-challtestsrv', ['-dns01', `127.0.0.1:${dnsPort}`, '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', `127.0.0.1:${challManagementPort}`, '-defaultIPv4', '127.0.0.1', '-defaultIPv6', ''], { env: process.env, stdin: Buffer.alloc(0) });
  const pebble = runCommand(t, 'pebble', ['-config', config, '-dnsserver', `127.0.0.1:${dnsPort}`], {
    // No random sleeps before validation, no nonces rejected at random: the same run every time.
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' },
    stdin: Buffer.alloc(0),
  });
  const root = await within(poll(() => httpsGet(`https://127.0.0.1:${managementPort}/roots/0`, httpsCa.cert)), 30_000, () => `pebble's management API does not answer: ${String(pebble.proc.exitCode)}`);
  const rootFile = join(dir, 'pebble-root.pem');
  writeFileSync(rootFile, root);

  // /etc/tlsd/hello as examples/systemd/README.md sets it up, under dir/etc: a tlsd-keygen
  // identity first, key root:GROUP 0640 in a directory root:GROUP 0750 (GROUP is nogroup here).
  const live = join(dir, 'etc', 'tlsd', 'hello');
  mkdirSync(live, { recursive: true });
  chmodSync(join(dir, 'etc'), 0o755);
  chmodSync(join(dir, 'etc', 'tlsd'), 0o755);
  chownSync(live, 0, NOGROUP);
  chmodSync(live, 0o750);
  const key = join(live, 'key.pem');
  const cert = join(live, 'cert.pem');
  execFileSync(bin('tlsd-keygen'), ['-k', key, '-c', cert, '-s', 'hello'], { stdio: 'ignore' });
  chownSync(key, 0, NOGROUP);
  chmodSync(key, 0o640);
  const selfSigned = opensslFingerprint(cert);

  // Peers with certificates from a CA of their own, which tlsd checks (--ca).
  const clientCa = makeCa(dir, 'clients');
  const clients = Array.from({ length: 4 }, (_, i) => issue(clientCa, dir, `client${i}`));
  const tlsd = await startTlsd(t, { identity: { key, cert, fingerprint: selfSigned }, options: ['--user', 'nobody', '--group', 'nogroup', '--ca', clientCa.cert], command: ['cat'], env: quietSyslog });
  const port = tlsd.port;
  const verifying = { ca: root, servername: NAME, rejectUnauthorized: true };

  // Before: a client that trusts pebble's root refuses tlsd's self-signed certificate.
  const before = await echo(port, clients[0]!, verifying);
  t.match(before.error, /self[- ]signed|unable to get|unable to verify/, `before any ACME certificate, a client verifying against pebble's root refuses: ${before.error}`);

  // Connections open before the renewals, on the self-signed identity (pinned): they must keep going.
  const held = await Promise.all(clients.slice(0, 3).map((client) => hold(port, client)));
  t.same(
    held.map((h) => h.serverFingerprint),
    held.map(() => selfSigned),
    'three connections opened on the first, self-signed certificate',
  );

  // The hook as the README shows it (the very file), with this test's paths.
  const shown = readFileSync(exampleFile('systemd', 'certbot-deploy-hook'), 'utf8');
  const readme = readFileSync(exampleFile('systemd', 'README.md'), 'utf8');
  t.ok(readme.includes(`\`\`\`sh\n${shown}\`\`\``), 'examples/systemd/README.md shows certbot-deploy-hook as it is');
  const substitutions: Array<[string, string]> = [
    ['/etc/tlsd/hello/', `${live}/`],
    ['-g tlsd ', '-g nogroup '],
    ['systemctl reload tlsd@hello', `kill -HUP ${tlsd.proc.pid}`],
  ];
  let hook = shown;
  for (const [from, to] of substitutions) {
    t.ok(hook.includes(from), `the hook has ${JSON.stringify(from)}, replaced here by ${JSON.stringify(to)}`);
    hook = hook.replaceAll(from, to);
  }
  const certbotDirs = { config: join(dir, 'letsencrypt'), work: join(dir, 'certbot-work'), logs: join(dir, 'certbot-logs') };
  const hookFile = join(certbotDirs.config, 'renewal-hooks', 'deploy', 'tlsd-hello');
  mkdirSync(join(certbotDirs.config, 'renewal-hooks', 'deploy'), { recursive: true });
  writeFileSync(hookFile, hook, { mode: 0o755 });
  const certbotEnv = { ...process.env, REQUESTS_CA_BUNDLE: httpsCa.cert };
  const dirs = ['--config-dir', certbotDirs.config, '--work-dir', certbotDirs.work, '--logs-dir', certbotDirs.logs];
  const reloads = (): string[] => [...tlsd.stderr().matchAll(/Reloaded key and certificate, SHA256 ([0-9a-f]{64})/g)].map((m) => m[1]!);
  const liveChain = join(certbotDirs.config, 'live', NAME, 'fullchain.pem');

  // 1. The first certificate: certbot certonly, the hook named on the command line as the README says.
  const obtained = await runCommand(
    t,
    'certbot',
    ['certonly', '--standalone', '--non-interactive', '--agree-tos', '--register-unsafely-without-email', '--server', `https://127.0.0.1:${acmePort}/dir`, '--http-01-port', String(httpPort), '--http-01-address', '127.0.0.1', '--key-type', 'ecdsa', '-d', NAME, '--deploy-hook', hookFile, ...dirs],
    { env: certbotEnv, stdin: Buffer.alloc(0) },
  ).finished(120_000);
  t.equal(obtained.code, 0, `certbot certonly: ${obtained.stderr}`);
  const first = opensslFingerprint(liveChain);
  await tlsd.waitFor(new RegExp(`Reloaded key and certificate, SHA256 ${first}`));
  t.same(reloads(), [first], 'the hook installed the new pair and reloaded tlsd, once');
  t.notMatch(tlsd.stderr(), /Failed to load key or certificate/, 'tlsd, as nobody, read the pair the hook installed');
  const afterFirst = await echo(port, clients[1]!, verifying);
  t.same({ error: afterFirst.error, fingerprint: afterFirst.fingerprint, ok: afterFirst.ok }, { error: '', fingerprint: first, ok: true }, `a client verifying against pebble's root and the name ${NAME} is served, with the new certificate`);
  const sClient = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', NAME, '-verify_hostname', NAME, '-verify_return_error', '-CAfile', rootFile, '-cert', clients[2]!.cert, '-key', clients[2]!.key], { input: '', encoding: 'utf8', timeout: 20_000 });
  t.match(sClient.stdout, /Verify return code: 0 \(ok\)/, 'openssl s_client -verify_return_error -verify_hostname agrees');

  // 2. certbot renew --force-renewal under load: peers verifying against the root all along.
  const load = { ok: 0, failed: [] as string[], seen: new Map<string, number>(), bytes: 0, running: true };
  const workers = Array.from({ length: 4 }, async (_, w) => {
    for (let i = 0; load.running && i < 5000; i++) {
      const result = await echo(port, clients[w]!, verifying);
      if (result.ok) {
        load.ok++;
        load.bytes += result.bytes;
        load.seen.set(result.fingerprint, (load.seen.get(result.fingerprint) ?? 0) + 1);
      } else load.failed.push(result.error || 'echo incomplete');
      await sleep(20); // steady, not flat out: certbot shares the two cores
    }
  });
  await sleep(500);
  // Without a terminal, certbot renew first sleeps a random 1-480 s (to spread renewals over Let's
  // Encrypt's day); the test would wait for it, and time out three times in four.
  const renewed = await runCommand(t, 'certbot', ['renew', '--force-renewal', '--non-interactive', '--no-random-sleep-on-renew', ...dirs], { env: certbotEnv, stdin: Buffer.alloc(0) }).finished(120_000);
  t.equal(renewed.code, 0, `certbot renew --force-renewal: ${renewed.stderr}`);
  const second = opensslFingerprint(liveChain);
  t.not(second, first, 'a new certificate');
  await tlsd.waitFor(new RegExp(`Reloaded key and certificate, SHA256 ${second}`));
  // Some connections after the reload, then the load stops.
  const okAtReload = load.ok;
  await within(poll(async () => (load.ok >= okAtReload + 20 ? true : undefined)), 30_000, () => 'connections after the renewal');
  load.running = false;
  await within(Promise.all(workers), 60_000, () => 'the load ends');
  t.same(reloads(), [first, second], 'the renewal ran the hook once (the directory hook and the remembered --deploy-hook are one), one reload');
  t.same(load.failed, [], `no failed handshake during the renewal: ${load.ok} connections served`);
  t.ok((load.seen.get(first) ?? 0) > 0 && (load.seen.get(second) ?? 0) > 0, `peers saw the old certificate, then the new one: ${JSON.stringify(Object.fromEntries(load.seen))}`);
  t.same([...load.seen.keys()].sort(), [first, second].sort(), 'and no other');

  // The connections opened before both renewals are still there, on the certificate they began with.
  const after = await Promise.all(held.map((h) => h.finish()));
  t.same(after, held.map(() => true), 'the three connections opened before the renewals went on, every byte echoed');
  const figures = `ACME renewal: certonly then renew --force-renewal with pebble; ${load.ok} connections during the renewal (${load.seen.get(first) ?? 0} on the old certificate, ${load.seen.get(second) ?? 0} on the new), ${load.failed.length} failed handshakes, ${load.bytes} bytes echoed; 3 connections held across both renewals`;
  t.comment(figures);
});

/** `count` ports nobody listens on, all different. */
async function distinctPorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/** Calls `attempt` every 200 ms until it gives a value (an error counts as none). */
async function poll<T>(attempt: () => Promise<T | undefined>): Promise<T> {
  for (;;) {
    const value = await attempt().catch(() => undefined);
    if (value !== undefined) return value;
    await sleep(200);
  }
}

function httpsGet(url: string, caFile: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca: readFileSync(caFile), timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${url}: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

interface Echo {
  ok: boolean;
  error: string;
  fingerprint: string;
  bytes: number;
}

/** One connection: a handshake (verified as `tls` says), 4 KiB sent, and the whole echo back. */
function echo(port: number, client: TestIdentity, tls: ConnectionOptions): Promise<Echo> {
  const payload = randomBytes(4096);
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let fingerprint = '';
    let error = '';
    const socket = connect({ host: '127.0.0.1', port, key: readFileSync(client.key), cert: readFileSync(client.cert), ...tls });
    const timer = setTimeout(() => socket.destroy(new Error('no answer within 20 s')), 20_000);
    socket.once('secureConnect', () => {
      fingerprint = socket.getPeerX509Certificate()?.fingerprint256.replaceAll(':', '').toLowerCase() ?? '';
      socket.end(payload);
    });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', (e: Error) => (error ||= e.message));
    socket.once('close', () => {
      clearTimeout(timer);
      const ok = error === '' && Buffer.concat(chunks).equals(payload);
      resolve({ ok, error, fingerprint, bytes: ok ? payload.length : 0 });
    });
  });
}

interface Held {
  serverFingerprint: string;
  /** More bytes, the end, and the whole echo: true when all came back. */
  finish(): Promise<boolean>;
}

/** A connection kept open: the server's certificate is pinned, not verified, as before any CA. */
async function hold(port: number, client: TestIdentity): Promise<Held> {
  const socket: TLSSocket = connect({ host: '127.0.0.1', port, key: readFileSync(client.key), cert: readFileSync(client.cert), rejectUnauthorized: false });
  t.teardown(() => void socket.destroy());
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  const ended = new Promise<void>((resolve) => socket.once('end', resolve));
  const first = randomBytes(1024);
  socket.write(first);
  return {
    serverFingerprint: socket.getPeerX509Certificate()?.fingerprint256.replaceAll(':', '').toLowerCase() ?? '',
    async finish() {
      const second = randomBytes(1024);
      socket.end(second);
      await within(ended, 20_000, () => 'the held connection ends');
      return Buffer.concat(chunks).equals(Buffer.concat([first, second]));
    },
  };
}
