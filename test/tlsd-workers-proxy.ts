import t from 'tap';
import { readAll } from './lib/client.js';
import { cast, quietSyslog } from './lib/limits-faults.js';
import { proxiedTls, proxyV1, proxyV2 } from './lib/proxy-protocol.js';
import { startTlsd } from './lib/tlsd.js';

// --accept-proxy with --workers: the primary reads each PROXY header and hands the connection on;
// the bytes it read past the header (the start of the ClientHello, when both came in one write)
// must reach the worker's handshake, and the client the header names is who the limits count.

const { server, alice } = cast(t);
const BALANCER = '127.0.0.10';
const REPORT = ['sh', '-c', 'echo "$TCPREMOTEIP $PROXYREMOTEIP"; exec cat'];

t.test('headers in their own write and in one write with the ClientHello are both served, by both workers', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: REPORT, env: quietSyslog, options: ['--workers', '2', '--accept-proxy', BALANCER] });
  await tlsd.waitFor(/Started worker 2, pid \d+/);
  const replies = await Promise.all(
    Array.from({ length: 12 }, async (_, i) => {
      const header = i % 2 === 0 ? proxyV1([`192.0.2.${i + 1}`, 40000 + i], ['198.51.100.1', 443]) : proxyV2({ source: [`192.0.2.${i + 1}`, 40000 + i], destination: ['198.51.100.1', 443] });
      const socket = await proxiedTls(t, tlsd.port, { from: BALANCER, header, separately: i % 4 < 2, identity: alice });
      const reply = readAll(socket);
      socket.end(`echo ${i}\n`);
      return { i, text: (await reply).toString() };
    }),
  );
  for (const { i, text } of replies) t.equal(text, `192.0.2.${i + 1} ${BALANCER}\necho ${i}\n`, `client ${i}: its address from the header, and every byte echoed`);
  const log = tlsd.stderr();
  t.match(log, /tlsd: worker 1: 192\.0\.2\.\d+:\d+ via 127\.0\.0\.10:\d+: connected as SERVER/, 'worker 1 served some');
  t.match(log, /tlsd: worker 2: 192\.0\.2\.\d+:\d+ via 127\.0\.0\.10:\d+: connected as SERVER/, 'worker 2 served some');
});

t.test('--max-per-ip counts the client the header names, across workers', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: REPORT, env: quietSyslog, options: ['--workers', '2', '--accept-proxy', BALANCER, '--max-per-ip', '2'] });
  await tlsd.waitFor(/Started worker 2, pid \d+/);
  const held = [];
  for (let i = 0; i < 2; i++) {
    const socket = await proxiedTls(t, tlsd.port, { from: BALANCER, header: proxyV1(['192.0.2.77', 50000 + i], ['198.51.100.1', 443]), identity: alice });
    held.push(socket);
  }
  await tlsd.waitFor(/worker 1: 192\.0\.2\.77:\d+ via .*connected as SERVER[\s\S]*worker 2: 192\.0\.2\.77|worker 2: 192\.0\.2\.77:\d+ via .*connected as SERVER[\s\S]*worker 1: 192\.0\.2\.77/);
  const third = proxiedTls(t, tlsd.port, { from: BALANCER, header: proxyV1(['192.0.2.77', 50002], ['198.51.100.1', 443]), identity: alice, ms: 5_000 });
  await t.rejects(third, 'a third connection from the same client is refused, its two being on different workers');
  await tlsd.waitFor(/192\.0\.2\.77:50002 via 127\.0\.0\.10:\d+: connection refused: too many connections from 192\.0\.2\.77 \(2\)/);
  const other = await proxiedTls(t, tlsd.port, { from: BALANCER, header: proxyV1(['192.0.2.78', 50003], ['198.51.100.1', 443]), identity: alice });
  const reply = readAll(other);
  other.end('x\n');
  t.equal((await reply).toString(), `192.0.2.78 ${BALANCER}\nx\n`, 'another client of the balancer is served');
  for (const socket of held) socket.destroy();
});
