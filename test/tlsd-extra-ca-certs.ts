// NODE_EXTRA_CA_CERTS under every supported Node. Node 22 and 24 read that file on a thread of their
// own as soon as `tls` is loaded, through a descriptor opened without close-on-exec, which to tlsd's
// start-up looks like one it inherited. Closed in the middle of that read, the certificates are lost
// with a warning, and the descriptor's number, reused by then, is closed again under tlsd (its key
// file: "Cannot read key file: bad file descriptor"). A large file keeps the thread reading long
// enough for every start below to meet it.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { exchange } from './lib/client.js';
import { makeIdentity, tempDir } from './lib/identity.js';
import { quietSyslog } from './lib/limits-faults.js';
import { startTlsd } from './lib/tlsd.js';

const dir = tempDir();
const server = makeIdentity(dir, 'server');
const alice = makeIdentity(dir, 'alice');
const bundle = join(dir, 'extra-ca.pem');
writeFileSync(bundle, readFileSync(server.cert, 'utf8').repeat(3000));

const STARTS = 5;

t.test(`with NODE_EXTRA_CA_CERTS set, tlsd starts cleanly and serves (${STARTS} starts)`, async (t) => {
  for (let start = 1; start <= STARTS; start++) {
    const tlsd = await startTlsd(t, {
      identity: server,
      // The child lists its descriptors: the CA file must not be among them.
      command: ['sh', '-c', 'echo served; ls -l /proc/$$/fd; exec cat'],
      env: { ...quietSyslog, NODE_EXTRA_CA_CERTS: bundle },
    });
    const reply = await exchange(tlsd.port, alice, `ping ${start}\n`);
    t.match(reply, /^served\n/, `start ${start}: the child ran`);
    t.match(reply, `ping ${start}\n`, `start ${start}: and echoed`);
    t.notMatch(reply, bundle, `start ${start}: the child holds no descriptor of the CA file`);
    t.notMatch(tlsd.stderr(), /Warning|Ignoring extra certs/, `start ${start}: no warning from Node`);
    tlsd.proc.kill('SIGTERM');
    await tlsd.exited;
  }
});
