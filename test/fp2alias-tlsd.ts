import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { exchange } from './lib/client.js';
import { makeIdentity, tempDir } from './lib/identity.js';
import { installedPrograms, startTlsd } from './lib/tlsd.js';

// End to end, as the manual's example: tlsd -- fp2alias -- sh -c 'echo "Hello, ${ALIAS}!"',
// with fp2alias found on PATH as an installed package puts it.
const dir = tempDir('fp2alias-tlsd-');
const server = makeIdentity(dir, 'server');
const alice = makeIdentity(dir, 'alice');
const mallory = makeIdentity(dir, 'mallory');
const binDir = join(dir, 'bin');
const file = join(dir, 'aliases');
writeFileSync(file, `# test aliases\n${alice.fingerprint} alice\n`);

installedPrograms(binDir);

const env = { PATH: `${binDir}:${process.env.PATH ?? ''}`, TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log' };

t.test('a known client is greeted by its alias, an unknown one refused', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, env, command: ['fp2alias', '-e', '-f', file, '--', 'sh', '-c', 'echo "Hello, ${ALIAS}!"'] });
  t.equal(await exchange(tlsd.port, alice, ''), 'Hello, alice!\n');
  t.equal(await exchange(tlsd.port, mallory, ''), "I don't recognize you.\n");
  await tlsd.waitFor(/fp2alias: unknown fingerprint [0-9a-f]{64}: refused/);
});

t.test('with -a a new client registers over TLS and then talks to the command', async (t) => {
  const open = join(dir, 'open-aliases');
  const tlsd = await startTlsd(t, { identity: server, env, command: ['fp2alias', '-a', '-f', open, '--', 'sh', '-c', 'echo "Hello, ${ALIAS}!"; cat'] });
  t.equal(await exchange(tlsd.port, mallory, 'mallory\nwhat I say next\n'), 'Enter your alias, please.\nHello, mallory!\nwhat I say next\n');
  t.equal(await exchange(tlsd.port, mallory, 'ignored\n'), 'Hello, mallory!\nignored\n', 'known the second time');
  t.equal(await exchange(tlsd.port, alice, 'mallory\n'), "Enter your alias, please.\nThe 'mallory' alias is taken already.\n");
});
