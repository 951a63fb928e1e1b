import { chmodSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { connectTls, exchange, readAll } from './lib/client.js';
import { opensslFingerprint, tempDir, makeIdentity } from './lib/identity.js';
import { runProgram } from './lib/run.js';
import { startTlsd } from './lib/tlsd.js';
import { fingerprint } from '../src/daemon/fingerprint.js';

const systemIdentityPresent = existsSync('/etc/tls/key.pem') || existsSync('/etc/tls/cert.pem');
const peer = makeIdentity(tempDir(), 'peer');

/** The fingerprint a real client sees when it connects, and what the child printed. */
async function served(port: number): Promise<{ seen: string; output: string }> {
  const socket = await connectTls(port, peer);
  const seen = fingerprint(socket.getPeerX509Certificate()!.raw);
  const output = (await readAll(socket)).toString();
  return { seen, output };
}

t.test('with no -k, -c or /etc/tls identity, one is made under $XDG_CONFIG_HOME/tlsd and kept', { skip: systemIdentityPresent && '/etc/tls holds an identity on this machine' }, async (t) => {
  const home = tempDir();
  const config = join(home, 'cfg');
  const env = { HOME: home, XDG_CONFIG_HOME: config };
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

t.test('without XDG_CONFIG_HOME (or with a relative one) the identity lives in ~/.config/tlsd', { skip: systemIdentityPresent && '/etc/tls holds an identity on this machine' }, async (t) => {
  const home = tempDir();
  const tlsd = await startTlsd(t, { command: ['cat'], env: { HOME: home, XDG_CONFIG_HOME: 'relative/cfg' } });
  t.match(tlsd.stderr(), `Created a new identity: ${home}/.config/tlsd/key.pem and ${home}/.config/tlsd/cert.pem`);
  t.ok(existsSync(join(home, '.config', 'tlsd', 'cert.pem')));
});

t.test('an identity that cannot be made: one line, exit 1', { skip: systemIdentityPresent && '/etc/tls holds an identity on this machine' }, async (t) => {
  const home = tempDir();
  const blocker = join(home, 'not-a-dir');
  writeFileSync(blocker, '');
  const result = await runProgram('tlsd', ['-e', '-b', '127.0.0.1', 'cat'], { env: { HOME: home, XDG_CONFIG_HOME: blocker } });
  t.equal(result.status, 1);
  t.match(result.stderr, new RegExp(`^tlsd: Cannot create an identity in ${blocker}/tlsd: .*\\n$`));
  t.equal(result.stderr.split('\n').length, 2, 'one line');
});

t.test('explicit paths that do not exist stay an error, and nothing is made', async (t) => {
  const home = tempDir();
  const missing = join(home, 'nope.pem');
  const result = await runProgram('tlsd', ['-e', '-b', '127.0.0.1', '-k', missing, 'cat'], { env: { HOME: home, XDG_CONFIG_HOME: join(home, 'cfg') } });
  t.equal(result.status, 1);
  t.match(result.stderr, new RegExp(`^tlsd: .*${missing}.*\\n$`));
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
