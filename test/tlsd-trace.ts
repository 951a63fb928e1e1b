// NODE_DEBUG=tlsd: each connection's events, in the order they happened, one line each on stderr
// and named by the peer's address, so that interleaved sessions can be told apart; nothing at all
// without it.
import { once } from 'node:events';
import { connect } from 'node:net';
import t, { type Test } from 'tap';
import { connectTls, readAll } from './lib/client.js';
import { makeIdentity, tempDir } from './lib/identity.js';
import { startTlsd, type RunningTlsd } from './lib/tlsd.js';

const dir = tempDir();
const server = makeIdentity(dir, 'server');
const alice = makeIdentity(dir, 'alice');

/** What the trace says of one connection, in order, without the `TLSD <pid>: <label>: ` prefix. */
function traceOf(tlsd: RunningTlsd, label: string): string[] {
  const prefix = new RegExp(`^TLSD \\d+: ${label.replace(/[.[\]]/g, '\\$&')}: `);
  return tlsd
    .stderr()
    .split('\n')
    .filter((line) => prefix.test(line))
    .map((line) => line.replace(prefix, ''));
}

/** Whether `events` holds lines starting with each of `expected`, in that order (others between). */
function inOrder(events: readonly string[], expected: readonly string[]): boolean {
  let next = 0;
  for (const event of events) if (next < expected.length && event.startsWith(expected[next]!)) next++;
  return next === expected.length;
}

/** Serves one peer with a certificate; returns its label once its session has ended. */
async function servedPeer(t: Test, tlsd: RunningTlsd): Promise<string> {
  const socket = await connectTls(tlsd.port, alice);
  const label = `127.0.0.1:${socket.localPort}`;
  const reply = readAll(socket);
  socket.end('hello\n');
  t.equal((await reply).toString(), 'hi\n', 'the peer is served');
  await tlsd.waitFor(new RegExp(`${label}: session ended`));
  return label;
}

t.test('NODE_DEBUG=tlsd traces a served and a refused peer, each in order', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'cat >/dev/null; echo hi'], env: { NODE_DEBUG: 'tlsd' } });
  const served = await servedPeer(t, tlsd);
  const events = traceOf(tlsd, served);
  t.ok(
    inOrder(events, ['accept', 'handshake done, TLSv1.3', 'admitted as SERVER, SHA256 ' + alice.fingerprint, 'launched child ', 'peer EOF', 'half-close: child stdin ended', 'child EOF', 'output flushed', 'connection closed', 'end']),
    'accept, handshake, admit, launch, relay and end, in order',
    { events },
  );
  t.ok(inOrder(events, ['launched child ', 'peer EOF', 'child exited, status 0', 'end']), 'the child exits after the peer EOF, before the end', { events });

  // Without a certificate: refused after the handshake, and nothing launched for it.
  const refused = await connectTls(tlsd.port);
  const refusedLabel = `127.0.0.1:${refused.localPort}`;
  await readAll(refused);
  await tlsd.waitFor(new RegExp(`${refusedLabel}: Peer certificate is required`));
  const refusedEvents = traceOf(tlsd, refusedLabel);
  t.ok(inOrder(refusedEvents, ['accept', 'handshake done', 'refused: Peer certificate is required']), 'the refusal names its check', { events: refusedEvents });
  t.notOk(refusedEvents.some((event) => event.startsWith('launched')), 'no child for the refused peer');

  // Not TLS at all: the handshake fails, and the trace says so for that connection.
  const plain = connect(tlsd.port, '127.0.0.1');
  await once(plain, 'connect');
  const plainLabel = `127.0.0.1:${plain.localPort}`;
  plain.on('error', () => {});
  plain.end('GET / HTTP/1.0\r\n\r\n');
  await once(plain, 'close');
  await tlsd.waitFor(new RegExp(`${plainLabel}: TLS handshake has failed`));
  t.ok(inOrder(traceOf(tlsd, plainLabel), ['accept', 'handshake failed: ']), 'a failed handshake is traced', { events: traceOf(tlsd, plainLabel) });
});

t.test('without NODE_DEBUG there is no trace', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'cat >/dev/null; echo hi'], env: { NODE_DEBUG: '' } });
  await servedPeer(t, tlsd);
  t.notMatch(tlsd.stderr(), /^TLSD \d+:/m, 'no trace line');
});
