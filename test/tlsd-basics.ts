import t from 'tap';
import { makeIdentity, tempDir } from './lib/identity.js';
import { startTlsd } from './lib/tlsd.js';
import { exchange } from './lib/client.js';

const dir = tempDir();
const server = makeIdentity(dir, 'server');
const alice = makeIdentity(dir, 'alice');

t.test('echo through cat', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'] });
  t.equal(await exchange(tlsd.port, alice, 'hello\n'), 'hello\n');
});

t.test('the child sees SIDE and the peer fingerprint as openssl computes it', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo "$SIDE $SHA256"'] });
  t.equal(await exchange(tlsd.port, alice, ''), `SERVER ${alice.fingerprint}\n`);
});
