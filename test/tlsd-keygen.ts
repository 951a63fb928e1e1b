import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { connectTls, readAll } from './lib/client.js';
import { makeIdentity, opensslFingerprint, tempDir, type TestIdentity } from './lib/identity.js';
import { runProgram, type RunResult } from './lib/run.js';
import { startTlsd, type Teardown } from './lib/tlsd.js';

// Every run names its files with -k and -c: the defaults are /etc/tls, and tests run as root.

type KeyType = 'ec' | 'rsa' | 'ed25519';
const keyTypes: KeyType[] = ['ec', 'rsa', 'ed25519'];

/** A temporary directory removed when the test that made it ends. */
function scratch(t: Teardown): string {
  const dir = tempDir('tlsd-keygen-test-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const keygen = (args: string[]): Promise<RunResult> => runProgram('tlsd-keygen', args);

interface KeygenIdentity extends TestIdentity {
  /** The fingerprint line tlsd-keygen printed; `fingerprint` is openssl's, computed independently. */
  printed: string;
  result: RunResult;
}

/** Runs tlsd-keygen for `dir/NAME-key.pem` and `dir/NAME-cert.pem`, failing the test if it fails. */
async function generate(t: Test, dir: string, name: string, options: string[] = []): Promise<KeygenIdentity> {
  const key = join(dir, `${name}-key.pem`);
  const cert = join(dir, `${name}-cert.pem`);
  const result = await keygen(['-k', key, '-c', cert, ...options]);
  t.equal(result.status, 0, `tlsd-keygen ${options.join(' ')} succeeds`, { stderr: result.stderr });
  return { key, cert, fingerprint: opensslFingerprint(cert), printed: result.stdout.split('\n')[0] ?? '', result };
}

const openssl = (args: string[]): string => execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const mode = (file: string): number => statSync(file).mode & 0o777;
/** "notAfter=Nov 20 03:29:58 2036 GMT" and the like, as milliseconds. */
const opensslDate = (line: string): number => Date.parse(line.replace(/^\w+=/, '').trim());
const day = 24 * 60 * 60 * 1000;
const stackTrace = /^\s+at /m;

const expectedKey: Record<KeyType, RegExp[]> = {
  ec: [/Public Key Algorithm: id-ecPublicKey/, /NIST CURVE: P-256/, /Signature Algorithm: ecdsa-with-SHA256/],
  rsa: [/Public Key Algorithm: rsaEncryption/, /Public-Key: \(2048 bit\)/, /Signature Algorithm: sha256WithRSAEncryption/],
  ed25519: [/Public Key Algorithm: ED25519/, /Signature Algorithm: ED25519/],
};

for (const type of keyTypes) {
  t.test(`${type}: openssl reads the key and the self-signed certificate, which match`, async (t) => {
    const dir = scratch(t);
    const id = await generate(t, dir, type, type === 'ec' ? [] : ['-t', type]);
    const text = openssl(['x509', '-in', id.cert, '-noout', '-text']);
    for (const pattern of expectedKey[type]) t.match(text, pattern, `openssl x509 -text shows ${pattern.source}`);
    t.match(text, /Issuer: CN = tlsd\n[\s\S]*Subject: CN = tlsd\n/, 'self-issued, CN=tlsd by default');
    t.match(openssl(['verify', '-CAfile', id.cert, id.cert]), /: OK$/m, 'its signature verifies with its own key');
    const certKey = openssl(['x509', '-in', id.cert, '-noout', '-pubkey']);
    const privateKeysPublic = openssl(['pkey', '-in', id.key, '-pubout']);
    t.match(certKey, /-----BEGIN PUBLIC KEY-----/, 'openssl x509 -pubkey reads it');
    t.equal(certKey, privateKeysPublic, 'the certificate holds the public half of the key');
    t.equal(mode(id.key), 0o600, 'the key is readable by its owner only');
    t.equal(id.result.stdout, `${id.fingerprint}\n`, 'stdout is the fingerprint alone, as openssl x509 -outform DER | sha256sum computes it');
  });
}

t.test('--bits sets the RSA key size', async (t) => {
  const id = await generate(t, scratch(t), 'rsa3072', ['-t', 'rsa', '-b', '3072']);
  t.match(openssl(['x509', '-in', id.cert, '-noout', '-text']), /Public-Key: \(3072 bit\)/, 'a 3072-bit certificate');
  t.match(openssl(['pkey', '-in', id.key, '-noout', '-text']), /Private-Key: \(3072 bit/, 'a 3072-bit key');
});

t.test('subject and validity are what was asked, as openssl x509 shows them', async (t) => {
  const dir = scratch(t);
  const show = (cert: string): string[] => openssl(['x509', '-in', cert, '-noout', '-subject', '-startdate', '-enddate', '-nameopt', 'compat']).trim().split('\n');

  const before = Date.now();
  const named = await generate(t, dir, 'named', ['-s', '/CN=alice\\/laptop/O=Example Corp/C=DE', '-d', '30']);
  const after = Date.now();
  const [subject, start, end] = show(named.cert);
  t.equal(subject, 'subject=/CN=alice\\/laptop/O=Example Corp/C=DE', 'the subject, attributes in order');
  // X.509 times are whole seconds: the start is the second the run began in, or a later one.
  t.ok(opensslDate(start!) >= before - 1000 && opensslDate(start!) <= after, `starts now (${start})`);
  t.equal(opensslDate(end!) - opensslDate(start!), 30 * day, `ends 30 days later (${end})`);

  const plain = await generate(t, dir, 'plain', ['-s', 'bob']);
  t.equal(show(plain.cert)[0], 'subject=/CN=bob', 'a subject without a slash is the common name');

  const defaults = await generate(t, dir, 'defaults');
  const [defaultSubject, defaultStart, defaultEnd] = show(defaults.cert);
  t.equal(defaultSubject, 'subject=/CN=tlsd', 'CN=tlsd by default');
  t.equal(opensslDate(defaultEnd!) - opensslDate(defaultStart!), 3650 * day, 'valid 3650 days by default');
});

t.test('existing files are never overwritten without --force, and nothing is written', async (t) => {
  const dir = scratch(t);
  const old = await generate(t, dir, 'old');
  const oldKey = readFileSync(old.key, 'utf8');
  const fresh = { key: join(dir, 'fresh-key.pem'), cert: join(dir, 'fresh-cert.pem') };

  for (const [what, key, cert] of [['key', old.key, fresh.cert], ['certificate', fresh.key, old.cert]] as const) {
    const result = await keygen(['-k', key, '-c', cert]);
    t.equal(result.status, 1, `an existing ${what}: exit 1`);
    t.equal(result.stdout, '', 'nothing on stdout');
    t.match(result.stderr, /^tlsd-keygen: \S+ exists already; nothing written \(use --force to replace it\)\n$/, 'one line naming the file');
    t.notOk(existsSync(fresh.key) || existsSync(fresh.cert), 'the other file is not created either');
  }
  t.equal(readFileSync(old.key, 'utf8'), oldKey, 'the old key is untouched');
  t.equal(opensslFingerprint(old.cert), old.fingerprint, 'the old certificate is untouched');

  // A symbolic link where the key goes must not be written through, with or without --force.
  const victim = join(dir, 'victim');
  writeFileSync(victim, 'precious\n');
  const link = join(dir, 'link-key.pem');
  symlinkSync(victim, link);
  const refused = await keygen(['-k', link, '-c', join(dir, 'link-cert.pem')]);
  t.equal(refused.status, 1, 'a symbolic link counts as an existing file');
  t.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the link target is untouched');

  // --force: both replaced, and the key is 0600 even where the old one was readable by all.
  chmodSync(old.key, 0o644);
  const forced = await keygen(['-k', old.key, '-c', old.cert, '--force']);
  t.equal(forced.status, 0, '--force replaces them', { stderr: forced.stderr });
  t.not(readFileSync(old.key, 'utf8'), oldKey, 'a new key');
  t.equal(mode(old.key), 0o600, 'the new key is 0600, not the old mode');
  t.equal(forced.stdout, `${opensslFingerprint(old.cert)}\n`, 'a new certificate, whose fingerprint is printed');
  t.not(opensslFingerprint(old.cert), old.fingerprint, 'the certificate changed');
  t.equal(openssl(['x509', '-in', old.cert, '-noout', '-pubkey']), openssl(['pkey', '-in', old.key, '-pubout']), 'the new pair matches');

  const linkForced = await keygen(['-k', link, '-c', join(dir, 'link-cert.pem'), '-f']);
  t.equal(linkForced.status, 0, '--force over a symbolic link succeeds', { stderr: linkForced.stderr });
  t.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the link target is untouched');
  t.notOk(lstatSync(link).isSymbolicLink(), 'the link itself was replaced by the key');
  t.equal(mode(link), 0o600, 'the key in its place is 0600');
  t.same(readdirSync(dir).filter((name) => name.endsWith('.tmp')), [], 'no temporary file left behind');
});

t.test('--tlsa HOST --port N prints the DANE record of the certificate', async (t) => {
  const dir = scratch(t);
  const id = await generate(t, dir, 'dane', ['--tlsa', 'chat.example.org', '--port', '5600']);
  t.equal(id.printed, id.fingerprint, 'the fingerprint first, as openssl computes it');
  t.equal(id.result.stdout, `${id.fingerprint}\n_5600._tcp.chat.example.org. IN TLSA 3 0 1 ${id.fingerprint}\n`, 'then the record: 3 0 1 and the same value');

  const absolute = await keygen(['--fingerprint', id.cert, '--tlsa', 'Example.ORG.', '-p', '443']);
  t.equal(absolute.status, 0, 'with --fingerprint too');
  t.equal(absolute.stdout, `${id.fingerprint}\n_443._tcp.example.org. IN TLSA 3 0 1 ${id.fingerprint}\n`, 'the name in its one form: lowercased, a final dot not doubled');
});

t.test('--fingerprint prints the fingerprint of an existing certificate and writes nothing', async (t) => {
  const dir = scratch(t);
  const byOpenssl = makeIdentity(dir, 'openssl');
  const files = readdirSync(dir).sort();

  const pem = await keygen(['--fingerprint', byOpenssl.cert]);
  t.equal(pem.status, 0, 'exit 0');
  t.equal(pem.stdout, `${byOpenssl.fingerprint}\n`, 'a PEM certificate made by openssl');
  t.equal(pem.stderr, '', 'nothing on stderr');

  // tlsd --cert-dir stores peer certificates in DER: those work too.
  const der = join(dir, 'cert.der');
  const derBytes = execFileSync('openssl', ['x509', '-in', byOpenssl.cert, '-outform', 'DER']);
  writeFileSync(der, derBytes);
  const fromDer = await keygen(['--fingerprint', der]);
  t.equal(fromDer.stdout, `${createHash('sha256').update(derBytes).digest('hex')}\n`, 'a DER certificate');

  t.same(readdirSync(dir).sort(), [...files, 'cert.der'].sort(), 'no file written');

  for (const [what, file] of [['a missing file', join(dir, 'missing.pem')], ['a key, not a certificate', byOpenssl.key]] as const) {
    const result = await keygen(['--fingerprint', file]);
    t.equal(result.status, 1, `${what}: exit 1`);
    t.equal(result.stdout, '', `${what}: nothing on stdout`);
    t.match(result.stderr, /^tlsd-keygen: Cannot (read|use) certificate file \S+: .+\n$/, `${what}: one line`);
  }
});

t.test('bad input: one error line, exit 1, no stack trace, nothing written', async (t) => {
  const dir = scratch(t);
  const out = ['-k', join(dir, 'key.pem'), '-c', join(dir, 'cert.pem')];
  const cases: Array<[string, string[], RegExp]> = [
    ['unknown key type', ['-t', 'dsa'], /-t, --type/],
    ['zero days', ['-d', '0'], /-d, --days/],
    ['days not a number', ['-d', 'ten'], /-d, --days/],
    ['RSA too small', ['-t', 'rsa', '-b', '1024'], /-b, --bits/],
    ['--bits without RSA', ['-b', '4096'], /-b, --bits.*RSA/],
    ['unknown subject attribute', ['-s', '/CN=a/XX=b'], /unknown subject attribute "XX"/],
    ['empty common name', ['-s', '/CN='], /CN is empty/],
    ['bad country', ['-s', '/C=Germany'], /two-letter country code/],
    ['--tlsa without --port', ['--tlsa', 'example.org'], /--tlsa.*--port.*go together/],
    ['--port without --tlsa', ['-p', '443'], /--tlsa.*--port.*go together/],
    ['--tlsa with an address', ['--tlsa', '192.0.2.1', '-p', '443'], /not an address/],
    ['--tlsa with a bad name', ['--tlsa', 'exa mple.org', '-p', '443'], /DNS name/],
    ['port out of range', ['--tlsa', 'example.org', '-p', '70000'], /-p, --port/],
    ['--fingerprint with --type', ['--fingerprint', join(dir, 'x.pem'), '-t', 'rsa'], /cannot be used with/],
    ['an operand', ['extra'], /too many arguments/],
    ['an unknown option', ['--colour'], /unknown option/],
  ];
  for (const [what, args, pattern] of cases) {
    const result = await keygen([...out, ...args]);
    t.equal(result.status, 1, `${what}: exit 1`);
    t.equal(result.stdout, '', `${what}: nothing on stdout`);
    const errors = result.stderr.split('\n').filter((line) => /^(error|tlsd-keygen):/.test(line));
    t.equal(errors.length, 1, `${what}: one error line`, { stderr: result.stderr });
    t.match(errors[0], pattern, `${what}: says what is wrong`);
    t.notMatch(result.stderr, stackTrace, `${what}: no stack trace`);
  }
  const same = await keygen(['-k', join(dir, 'both.pem'), '-c', join(dir, 'both.pem')]);
  t.equal(same.status, 1, 'key and certificate in one file: exit 1');
  t.match(same.stderr, /^tlsd-keygen: the key and the certificate cannot both be \S+\n$/, 'one line says why');
  const unwritable = await keygen(['-k', '/proc/tlsd-keygen-test/key.pem', '-c', '/proc/tlsd-keygen-test/cert.pem']);
  t.equal(unwritable.status, 1, 'a directory that cannot be made: exit 1');
  t.match(unwritable.stderr, /^tlsd-keygen: Cannot write \/proc\/tlsd-keygen-test\/key\.pem: .+; nothing written\n$/, 'one line names the file');
  t.same(readdirSync(dir), [], 'nothing written');
});

/** Runs a TLS client until the server closes; its stdin stays open so it does not close first. */
function runClient(command: string, args: string[], ms = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const proc = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    proc.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    proc.stdin.on('error', () => {});
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${command} did not finish within ${ms} ms; stdout: ${stdout}; stderr: ${stderr}`));
    }, ms);
    proc.once('error', reject);
    proc.once('close', () => {
      clearTimeout(timer);
      proc.stdin.destroy();
      resolve(stdout);
    });
  });
}

const fingerprintLine = (output: string): string | undefined => output.match(/^[0-9a-f]{64}$/m)?.[0];

for (const type of keyTypes) {
  t.test(`${type}: tlsd serves with a keygen identity, and keygen clients are seen by the fingerprint keygen printed`, async (t) => {
    const dir = scratch(t);
    const server = await generate(t, dir, 'server', ['-t', type]);
    const client = await generate(t, dir, 'client', ['-t', type]);
    const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo "$SHA256"'] });

    // Node's TLS client: the child sees our fingerprint, and we see the server's.
    const socket = await connectTls(tlsd.port, client);
    const serverDer = socket.getPeerCertificate().raw;
    const reply = readAll(socket);
    socket.end();
    t.equal((await reply).toString(), `${client.printed}\n`, 'node: $SHA256 is the fingerprint keygen printed for the client');
    t.equal(createHash('sha256').update(serverDer).digest('hex'), server.printed, 'node: the server presents the certificate keygen printed');

    const sClient = await runClient('openssl', ['s_client', '-quiet', '-key', client.key, '-cert', client.cert, '-connect', `127.0.0.1:${tlsd.port}`]);
    t.equal(fingerprintLine(sClient), client.printed, 'openssl s_client: $SHA256 is the fingerprint keygen printed');

    const log = join(dir, 'gnutls.log');
    const gnutls = await runClient('gnutls-cli', ['--insecure', `--logfile=${log}`, `--x509keyfile=${client.key}`, `--x509certfile=${client.cert}`, `--port=${tlsd.port}`, '127.0.0.1']);
    t.equal(fingerprintLine(gnutls), client.printed, 'gnutls-cli: $SHA256 is the fingerprint keygen printed', { log: existsSync(log) ? readFileSync(log, 'utf8') : '' });
  });
}
