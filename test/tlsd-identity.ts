import { chmodSync, copyFileSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { connectTls, exchange, readAll } from './lib/client.js';
import { opensslFingerprint, tempDir, makeIdentity, type TestIdentity } from './lib/identity.js';
import { afterStartLines, runProgram } from './lib/run.js';
import { startTlsd } from './lib/tlsd.js';
import { fingerprint } from '../src/peer/fingerprint.js';

const peer = makeIdentity(tempDir(), 'peer');

/**
 * The system directory (/etc/tls unless TLSD_SYSTEM_DIR says otherwise), here an empty one of the
 * test's own: what /etc/tls holds on this machine changes nothing.
 */
const noSystemIdentity = (): NodeJS.ProcessEnv => ({ TLSD_SYSTEM_DIR: tempDir() });

/** A system directory holding `key.pem` and `cert.pem`, as an administrator (or package) puts them. */
function systemDirWith(identity: TestIdentity): string {
  const dir = tempDir();
  copyFileSync(identity.key, join(dir, 'key.pem'));
  copyFileSync(identity.cert, join(dir, 'cert.pem'));
  return dir;
}

/** The fingerprint a real client sees when it connects, and what the child printed. */
async function served(port: number): Promise<{ seen: string; output: string }> {
  const socket = await connectTls(port, peer);
  const seen = fingerprint(socket.getPeerX509Certificate()!.raw);
  const output = (await readAll(socket)).toString();
  return { seen, output };
}

t.test('with no -k, -c or system identity, one is made under $XDG_CONFIG_HOME/tlsd and kept', async (t) => {
  const home = tempDir();
  const config = join(home, 'cfg');
  const env = { HOME: home, XDG_CONFIG_HOME: config, ...noSystemIdentity() };
  const dir = join(config, 'tlsd');
  const first = await startTlsd(t, { command: ['sh', '-c', 'echo "$SHA256"'], env });
  await first.waitFor(/Created a new identity: .*key\.pem and .*cert\.pem/);
  t.match(first.stderr(), `Created a new identity: ${dir}/key.pem and ${dir}/cert.pem`);
  t.equal(statSync(join(dir, 'key.pem')).mode & 0o777, 0o600, 'the key is readable by its owner only');
  t.equal(statSync(dir).mode & 0o777, 0o700, 'the directory is private');
  const made = opensslFingerprint(join(dir, 'cert.pem'));
  await first.waitFor(new RegExp(`Our certificate's SHA256: ${made}`));
  t.pass('its fingerprint is logged');
  const { seen, output } = await served(first.port);
  t.equal(seen, made, 'clients see the new certificate');
  t.equal(output, `${peer.fingerprint}\n`, 'and are served');
  first.proc.kill('SIGTERM');
  await first.exited;

  const second = await startTlsd(t, { command: ['cat'], env });
  t.notMatch(second.stderr(), /Created a new identity/, 'a second start makes nothing new');
  await second.waitFor(new RegExp(`Our certificate's SHA256: ${made}`));
  t.pass('and uses the same identity');
});

t.test('without XDG_CONFIG_HOME (or with a relative one) the identity lives in ~/.config/tlsd', async (t) => {
  const home = tempDir();
  const tlsd = await startTlsd(t, { command: ['cat'], env: { HOME: home, XDG_CONFIG_HOME: 'relative/cfg', ...noSystemIdentity() } });
  t.match(tlsd.stderr(), `Created a new identity: ${home}/.config/tlsd/key.pem and ${home}/.config/tlsd/cert.pem`);
  t.ok(existsSync(join(home, '.config', 'tlsd', 'cert.pem')));
});

t.test('an identity that cannot be made: one line, exit 1', async (t) => {
  const home = tempDir();
  const blocker = join(home, 'not-a-dir');
  writeFileSync(blocker, '');
  const result = await runProgram('tlsd', ['-e', '-b', '127.0.0.1', 'cat'], { env: { HOME: home, XDG_CONFIG_HOME: blocker, ...noSystemIdentity() } });
  t.equal(result.status, 1);
  t.match(afterStartLines(result.stderr), new RegExp(`^tlsd: Cannot create an identity in ${blocker}/tlsd: .*\\n$`));
  t.equal(afterStartLines(result.stderr).split('\n').length, 2, 'one line after Initializing');
});

t.test('an identity in the system directory (TLSD_SYSTEM_DIR here, /etc/tls by default) is used, and nothing is made', async (t) => {
  const home = tempDir();
  const system = makeIdentity(tempDir(), 'system');
  const dir = systemDirWith(system);
  const tlsd = await startTlsd(t, { command: ['sh', '-c', 'echo "$SHA256"'], env: { HOME: home, XDG_CONFIG_HOME: join(home, 'cfg'), TLSD_SYSTEM_DIR: dir } });
  await tlsd.waitFor(new RegExp(`Our certificate's SHA256: ${system.fingerprint}`));
  const { seen, output } = await served(tlsd.port);
  t.equal(seen, system.fingerprint, "clients see the system directory's certificate");
  t.equal(output, `${peer.fingerprint}\n`, 'and are served');
  t.notMatch(tlsd.stderr(), /Created a new identity/, 'no identity is made');
  t.notOk(existsSync(join(home, 'cfg', 'tlsd')), 'nothing under $XDG_CONFIG_HOME');
});

t.test('-k or -c alone: the other file comes from the system directory', async (t) => {
  const system = makeIdentity(tempDir(), 'system');
  const dir = systemDirWith(system);
  for (const option of [['-k', system.key], ['-c', system.cert]]) {
    const tlsd = await startTlsd(t, { options: option, command: ['cat'], env: { TLSD_SYSTEM_DIR: dir } });
    await tlsd.waitFor(new RegExp(`Our certificate's SHA256: ${system.fingerprint}`));
    t.pass(`${option[0]} given, the other file taken from ${dir}`);
  }
});

t.test('a system directory with only one of the two files is an error, not a reason to make an identity', async (t) => {
  const home = tempDir();
  const dir = tempDir();
  copyFileSync(makeIdentity(tempDir(), 'half').key, join(dir, 'key.pem'));
  const result = await runProgram('tlsd', ['-e', '-b', '127.0.0.1', 'cat'], { env: { HOME: home, XDG_CONFIG_HOME: join(home, 'cfg'), TLSD_SYSTEM_DIR: dir }, timeoutMs: 10_000 });
  t.equal(result.status, 1);
  t.match(afterStartLines(result.stderr), new RegExp(`^tlsd: Cannot read certificate file ${dir}/cert\\.pem: no such file or directory \\(ENOENT\\)\\n$`), 'one line naming the missing file');
  t.notOk(existsSync(join(home, 'cfg', 'tlsd')), 'no identity was made');
});

t.test('explicit paths that do not exist stay an error, and nothing is made', async (t) => {
  const home = tempDir();
  const missing = join(home, 'nope.pem');
  const result = await runProgram('tlsd', ['-e', '-b', '127.0.0.1', '-k', missing, 'cat'], { env: { HOME: home, XDG_CONFIG_HOME: join(home, 'cfg'), ...noSystemIdentity() } });
  t.equal(result.status, 1);
  t.match(afterStartLines(result.stderr), new RegExp(`^tlsd: .*${missing}.*\\n$`));
  t.notOk(existsSync(join(home, 'cfg', 'tlsd')), 'no identity was made');
});

t.test('a key readable by everyone is used, with a warning; a group-readable one is not warned about', async (t) => {
  const dir = tempDir();
  const open = makeIdentity(dir, 'open');
  chmodSync(open.key, 0o644);
  const warned = await startTlsd(t, { identity: open, command: ['cat'] });
  await warned.waitFor(new RegExp(`Key file ${open.key} is readable by everyone \\(mode 0644\\): chmod o-rwx it`));
  t.equal(await exchange(warned.port, peer, 'still served\n'), 'still served\n', 'and tlsd serves');

  const group = makeIdentity(dir, 'group');
  chmodSync(group.key, 0o640);
  const quiet = await startTlsd(t, { identity: group, command: ['cat'] });
  t.equal(await exchange(quiet.port, peer, 'x\n'), 'x\n');
  t.notMatch(quiet.stderr(), /readable by everyone/, 'no warning for 0640');
});
