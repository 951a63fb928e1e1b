import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { makeIdentity, type TestIdentity } from './lib/identity.js';
import { exampleEnv, exampleFile, runCommand, scratch, startService, talk } from './lib/examples.js';
import type { RunningTlsd } from './lib/tlsd.js';

// examples/file-server end to end, as its README runs it: serve-files.sh, browse-files.sh and
// accept-files.sh (through fp2alias) under tlsd over one files root, with users' own certificates
// and real clients (Node's tls, openssl s_client, ncat --ssl). Around the root lie files that no
// selector may ever reach.

const MiB = 1024 * 1024;
const base = scratch(t, 'file-server-test-');
const env = exampleEnv(base);
const root = join(base, 'files');
const SECRET = 'TOP SECRET: outside the root\n';
const ALSO_SECRET = 'ALSO SECRET: in a directory beside the root\n';

const server = makeIdentity(base, 'server');
const id = {
  alice: makeIdentity(base, 'alice'),
  bob: makeIdentity(base, 'bob'),
  mallory: makeIdentity(base, 'mallory'),
  stranger: makeIdentity(base, 'stranger'),
};
const aliases = join(base, 'aliases');
writeFileSync(aliases, `${id.alice.fingerprint} alice\n${id.bob.fingerprint} bob\n${id.mallory.fingerprint} mallory\n`);

// Outside the root.
writeFileSync(join(base, 'secret.txt'), SECRET);
mkdirSync(join(base, 'outside'));
writeFileSync(join(base, 'outside', 'also-secret.txt'), ALSO_SECRET);
writeFileSync(join(base, 'outside', 'target.txt'), ALSO_SECRET);
// The root: what users may see.
const big = randomBytes(5 * MiB);
const NOTES = Buffer.from('Notes\n\x1b[2Jcleared\x07 bell\r\n\ttabbed, \xc2\x9bC1\nno newline at the end', 'latin1');
mkdirSync(join(root, 'docs'), { recursive: true });
writeFileSync(join(root, 'bar'), 'foo\n');
writeFileSync(join(root, 'big.bin'), big);
writeFileSync(join(root, 'with space.txt'), 'spaces are fine\n');
writeFileSync(join(root, '%2e%2e'), 'just a name, never decoded\n');
writeFileSync(join(root, 'x\nfake'), 'a name with a newline\n');
writeFileSync(join(root, '.hidden'), 'hidden\n');
writeFileSync(join(root, 'end.txt'), '=== end ===\n');
writeFileSync(join(root, 'docs', 'notes.txt'), NOTES);
symlinkSync('bar', join(root, 'inside-link'));
symlinkSync('../secret.txt', join(root, 'outside-link'));
symlinkSync(join(base, 'secret.txt'), join(root, 'absolute-link'));
symlinkSync('../outside', join(root, 'outside-dir'));
// Upload directories: alice has one; bob has none; mallory's is a link to a directory outside.
mkdirSync(join(root, 'alice', 'subdir'), { recursive: true });
symlinkSync(join(base, 'outside', 'target.txt'), join(root, 'alice', 'existing-link'));
symlinkSync('../outside', join(root, 'mallory'));

const script = (name: string): string => exampleFile('file-server', name);
let serve: RunningTlsd;
let browse: RunningTlsd;
let accept: RunningTlsd;
let acceptSmall: RunningTlsd;

t.before(async () => {
  [serve, browse, accept, acceptSmall] = await Promise.all([
    startService(t, { identity: server, command: [script('serve-files.sh'), root], env }),
    startService(t, { identity: server, command: [script('browse-files.sh'), root], env }),
    startService(t, { identity: server, command: ['fp2alias', '-f', aliases, '--', script('accept-files.sh'), root], env }),
    startService(t, { identity: server, command: ['fp2alias', '-f', aliases, '--', script('accept-files.sh')], env: { ...env, TLSD_FILES_ROOT: root, TLSD_FILES_MAX_UPLOAD: '1000' } }),
  ]);
});

/** Sends `request`, ends our side, and resolves with the whole reply once the server hangs up. */
async function exchange(t: Test, port: number, identity: TestIdentity, request: string | Buffer): Promise<Buffer> {
  const conversation = await talk(t, port, identity, 'client');
  conversation.write(request);
  conversation.end();
  await conversation.closed();
  return conversation.bytes();
}

const download = async (t: Test, selector: string): Promise<string> => (await exchange(t, serve.port, id.alice, `${selector}\n`)).toString('utf8');
const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Every entry under `dir`: its path, its kind, and a link's target or a file's digest. */
function snapshot(dir: string, prefix = ''): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    const stat = lstatSync(path);
    const rel = `${prefix}${name}`;
    if (stat.isSymbolicLink()) return [`${rel} -> ${readlinkSync(path)}`];
    if (stat.isDirectory()) return [`${rel}/`, ...snapshot(path, `${rel}/`)];
    return [`${rel} ${sha256(readFileSync(path))}`];
  });
}

const NOT_ALLOWED = 'Error: not allowed.\n';
const NO_SUCH_FILE = 'Error: no such file.\n';

t.test('serve: a 5 MiB binary file arrives byte for byte, with openssl s_client as in the README and with Node', async (t) => {
  const openssl = runCommand(
    t,
    'openssl',
    ['s_client', '-quiet', '-verify_quiet', '-CAfile', server.cert, '-partial_chain', '-verify_return_error', '-key', id.alice.key, '-cert', id.alice.cert, '-connect', `127.0.0.1:${serve.port}`],
    { env, stdin: Buffer.from('big.bin\n') },
  );
  const [viaOpenssl, viaNode] = await Promise.all([openssl.finished(), exchange(t, serve.port, id.alice, 'big.bin\n')]);
  t.equal(viaOpenssl.code, 0, 'openssl exits 0 once the server hangs up');
  t.equal(viaOpenssl.stdout.length, big.length, 'openssl: every byte');
  t.equal(sha256(viaOpenssl.stdout), sha256(big), 'openssl: the same bytes');
  t.equal(viaNode.length, big.length, 'Node: every byte');
  t.equal(sha256(viaNode), sha256(big), 'Node: the same bytes');
});

t.test('serve: a selector names a file under the root, as it is', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['bar', 'foo\n', 'a file'],
    ['/bar', 'foo\n', 'a leading slash means the root'],
    ['bar\r', 'foo\n', 'a line ending in CR LF'],
    ['bar\nbig.bin', 'foo\n', 'one selector per connection: what follows it is ignored'],
    ['with space.txt', 'spaces are fine\n', 'a name with a space'],
    ['docs/notes.txt', NOTES.toString('utf8'), 'a file in a directory, byte for byte (downloads are not cleaned)'],
    ['inside-link', 'foo\n', 'a symbolic link that stays inside the root'],
    ['%2e%2e', 'just a name, never decoded\n', 'percent signs are part of the name'],
    ['docs', 'Error: not a file (browse directories with the browsing service).\n', 'a directory'],
    ['', 'Error: not a file (browse directories with the browsing service).\n', 'an empty line names the root'],
  ];
  for (const [selector, reply, what] of cases) t.equal(await download(t, selector), reply, `${JSON.stringify(selector)}: ${what}`);
});

// Selectors that try to leave the root, and what each gets. None may ever get a byte from outside.
const escapes: Array<[string, string]> = [
  ['../secret.txt', NOT_ALLOWED],
  ['..', NOT_ALLOWED],
  ['docs/../../secret.txt', NOT_ALLOWED],
  ['docs/../bar', NOT_ALLOWED],
  ['....//secret.txt', NOT_ALLOWED],
  ['....//....//secret.txt', NOT_ALLOWED],
  ['..\\secret.txt', NOT_ALLOWED],
  ['..%2fsecret.txt', NOT_ALLOWED],
  ['/../secret.txt', NOT_ALLOWED],
  ['./bar', NOT_ALLOWED],
  ['.hidden', NOT_ALLOWED],
  ['outside-link', NOT_ALLOWED],
  ['absolute-link', NOT_ALLOWED],
  ['outside-dir/also-secret.txt', NOT_ALLOWED],
  ['outside-dir', NOT_ALLOWED],
  ['mallory/target.txt', NOT_ALLOWED],
  ['bar\x1b[2J', NOT_ALLOWED],
  ['%2e%2e/secret.txt', NO_SUCH_FILE],
  ['%2e%2e%2fsecret.txt', NO_SUCH_FILE],
  ['%252e%252e%252fsecret.txt', NO_SUCH_FILE],
  ['\uff0e\uff0e/secret.txt', NO_SUCH_FILE],
  ['/etc/passwd', NO_SUCH_FILE],
  ['//etc/passwd', NO_SUCH_FILE],
  ['file:///etc/passwd', NO_SUCH_FILE],
  [join(base, 'secret.txt'), NO_SUCH_FILE],
  ['x', NO_SUCH_FILE],
  ['x?fake', NO_SUCH_FILE],
];

t.test('serve: paths never leave the root', async (t) => {
  for (const [selector, reply] of escapes) {
    const got = await download(t, selector);
    t.equal(got, reply, JSON.stringify(selector));
  }
  // A name with a newline cannot be asked for: the line ends at the newline.
  t.equal(await download(t, 'x\nfake'), NO_SUCH_FILE, 'a selector ends at its newline');
});

t.test('browse: listings and text files, one after another on one connection', async (t) => {
  const user = await talk(t, browse.port, id.alice, 'browser');
  /** One request, then end.txt's line, so that the end of the reply is known. */
  const ask = async (selector: string): Promise<string> => {
    const mark = user.text().length;
    user.write(`${selector}\nend.txt\n`);
    await user.waitFor('=== end ===\n', mark);
    return user.text().slice(mark, -'=== end ===\n'.length);
  };
  const names = (listing: string): string[] => listing.split('\n').slice(0, -1).sort();

  t.same(
    names(await ask('')),
    ['%2e%2e', 'absolute-link', 'alice/', 'bar', 'big.bin', 'docs/', 'end.txt', 'inside-link', 'mallory', 'outside-dir', 'outside-link', 'with space.txt', 'x?fake'].sort(),
    'the root: directories end with "/", dot files hidden, a newline in a name shown as "?"',
  );
  t.same(names(await ask('docs')), ['notes.txt'], 'a directory');
  t.same(names(await ask('/docs/')), ['notes.txt'], 'the same, with slashes around');
  t.equal(await ask('docs/notes.txt'), 'Notes\n[2Jcleared bell\n\ttabbed, C1\nno newline at the end\n', 'a text file, without what a terminal would obey, ending in a newline');
  t.equal(await ask('with space.txt'), 'spaces are fine\n', 'a name with a space');
  t.equal(await ask('big.bin'), 'Error: not a text file (download it with the file service).\n', 'a binary file is not shown');
  for (const [selector, reply] of escapes) t.equal(await ask(selector), reply, JSON.stringify(selector));
  t.notOk(user.bytes().includes('SECRET'), 'nothing from outside the root, ever');
  t.same(
    [...user.bytes()].filter((byte) => (byte < 0x20 && byte !== 0x0a && byte !== 0x09) || byte === 0x7f),
    [],
    'no control characters but newline and tab',
  );

  user.end();
  await user.closed();
  t.pass('the connection stays open until the user ends it');
});

t.test('accept: alice uploads into her own directory, byte for byte, with Node and with ncat as in the README', async (t) => {
  const photo = randomBytes(5 * MiB);
  const reply = await exchange(t, accept.port, id.alice, Buffer.concat([Buffer.from('photo.bin\n'), photo]));
  t.equal(reply.toString(), `Stored photo.bin (${photo.length} bytes).\n`);
  const stored = readFileSync(join(root, 'alice', 'photo.bin'));
  t.equal(stored.length, photo.length, 'every byte');
  t.equal(sha256(stored), sha256(photo), 'the same bytes');
  const again = await exchange(t, serve.port, id.bob, 'alice/photo.bin\n');
  t.equal(sha256(again), sha256(photo), 'and anyone can download it again');

  const text = Buffer.from('a note\nin two lines\n');
  const ncat = runCommand(t, 'ncat', ['--ssl', '--ssl-key', id.alice.key, '--ssl-cert', id.alice.cert, '127.0.0.1', String(accept.port)], {
    env,
    stdin: Buffer.concat([Buffer.from('note.txt\n'), text]),
  });
  const done = await ncat.finished();
  t.equal(done.stdout.toString(), `Stored note.txt (${text.length} bytes).\n`, 'ncat gets the reply');
  t.same(readFileSync(join(root, 'alice', 'note.txt')), text, 'ncat: the same bytes');

  t.equal((await exchange(t, accept.port, id.alice, 'note.txt\r\nshorter\n')).toString(), 'Stored note.txt (8 bytes).\n', 'a name in a CR LF line');
  t.equal(readFileSync(join(root, 'alice', 'note.txt'), 'utf8'), 'shorter\n', 'an upload replaces her file of that name');
  t.same(
    readdirSync(join(root, 'alice')).filter((name) => name.startsWith('.')),
    [],
    'no temporary file is left behind',
  );
});

t.test('accept: no directory, no upload; names stay in the uploader’s directory', async (t) => {
  const before = snapshot(base);
  const upload = async (identity: TestIdentity, name: string): Promise<string> =>
    (await exchange(t, accept.port, identity, Buffer.concat([Buffer.from(`${name}\n`), Buffer.from('payload\n')]))).toString();

  t.equal(await upload(id.bob, 'file.txt'), 'Error: you may not upload here.\n', 'bob has no directory');
  t.equal(await upload(id.mallory, 'file.txt'), 'Error: you may not upload here.\n', "mallory's directory is a link to somewhere else");
  t.equal(await upload(id.stranger, 'file.txt'), "I don't recognize you.\n", 'fp2alias turns away a stranger');
  const badName = 'Error: not allowed: a name is one file name, without "/", a leading dot or control characters.\n';
  for (const name of ['../escape.txt', '..', '.', '.hidden', '', '/tmp/absolute.txt', 'subdir/inside.txt', `${join(base, 'outside')}/x`, 'tab\there', 'esc\x1b[2J', 'cr\rinside']) {
    t.equal(await upload(id.alice, name), badName, JSON.stringify(name));
  }
  t.equal(await upload(id.alice, 'a'.repeat(256)), 'Error: not allowed: the name is too long.\n', 'a name over 255 bytes');
  t.equal(await upload(id.alice, 'subdir'), 'Error: cannot store the file under that name.\n', 'a directory is not replaced');
  t.same(snapshot(base), before, 'nothing changed anywhere');

  // A link in her directory is replaced by the upload, never written through.
  t.equal(await upload(id.alice, 'existing-link'), 'Stored existing-link (8 bytes).\n');
  t.equal(readFileSync(join(base, 'outside', 'target.txt'), 'utf8'), ALSO_SECRET, 'the link’s target is untouched');
  t.ok(lstatSync(join(root, 'alice', 'existing-link')).isFile(), 'the link became her file');
  t.equal(readFileSync(join(root, 'alice', 'existing-link'), 'utf8'), 'payload\n');

  // A newline ends the name: what follows is the file.
  t.equal(await upload(id.alice, 'evil\nname'), 'Stored evil (13 bytes).\n');
  t.equal(readFileSync(join(root, 'alice', 'evil'), 'utf8'), 'name\npayload\n');
  t.same(
    readdirSync(root, { recursive: true }).filter((name) => String(name).includes('\n')),
    ['x\nfake'],
    'no upload made a name with a newline',
  );
});

t.test('accept: an upload over the limit is refused and leaves nothing behind', async (t) => {
  const before = snapshot(root);
  const reply = await exchange(t, acceptSmall.port, id.alice, Buffer.concat([Buffer.from('large.bin\n'), randomBytes(1001)]));
  t.equal(reply.toString(), 'Error: too large: the limit is 1000 bytes.\n');
  t.same(snapshot(root), before, 'no file, no temporary file');
  const fits = randomBytes(1000);
  t.equal((await exchange(t, acceptSmall.port, id.alice, Buffer.concat([Buffer.from('fits.bin\n'), fits]))).toString(), 'Stored fits.bin (1000 bytes).\n');
  t.same(readFileSync(join(root, 'alice', 'fits.bin')), fits, 'exactly the limit is fine');
});
