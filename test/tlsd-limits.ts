import { rmSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { connectTls, exchange } from './lib/client.js';
import { tempDir } from './lib/identity.js';
import { attempt, countMatches, markers, rawConnect, readUntil, realClientHello, waitUntil, watchClose, withDeadline, type CloseWatch, cast, quietSyslog } from './lib/limits-faults.js';
import { startTlsd, type RunningTlsd } from './lib/tlsd.js';

const { server, alice, bob } = cast(t);
/** Long enough that nobody's handshake times out while a test looks; a broken case still ends. */
const patient = ['--handshake-timeout', '120'];
/** Each child leaves a file in $MARKS named after its pid, then echoes. */
const markAndEcho = ['sh', '-c', 'touch "$MARKS/child.$$"; exec cat'];

interface Stuck {
  kind: string;
  /** How tlsd names this peer in its log. */
  label: string;
  watch: CloseWatch;
  /** When it was opened, to tell a deadline from an immediate hang-up. */
  opened: number;
}

/** Connections that will never finish a handshake, of three kinds that must not hold anyone up. */
async function openStuck(t: Test, port: number, each: number): Promise<Stuck[]> {
  const hello = await realClientHello();
  const kinds: Array<[string, Buffer | undefined]> = [
    ['silent', undefined],
    ['20 bytes of a real ClientHello', hello.subarray(0, 20)],
    ['a TLS record header only', hello.subarray(0, 5)],
  ];
  const stuck: Stuck[] = [];
  for (const [kind, bytes] of kinds) {
    for (let i = 0; i < each; i++) {
      const socket = await rawConnect(t, port);
      if (bytes) await new Promise<void>((resolve, reject) => socket.write(bytes, (error) => (error ? reject(error) : resolve())));
      stuck.push({ kind, label: peerLabel(socket), watch: watchClose(socket), opened: Date.now() });
    }
  }
  return stuck;
}

/** tlsd names a peer by address and port; our end of the connection has that port (ask before it closes). */
function peerLabel(socket: { localPort?: number | undefined }): string {
  return `127.0.0.1:${socket.localPort}`;
}

t.test('no head-of-line blocking: silent, garbage and stalled connections never delay a client', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog, options: patient });
  const stuck = await openStuck(t, tlsd.port, 4);
  const garbage: Array<{ label: string; watch: CloseWatch }> = [];
  for (const bytes of ['GET / HTTP/1.0\r\n\r\n', 'this is not TLS at all\r\n', '\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09']) {
    const socket = await rawConnect(t, tlsd.port);
    socket.write(bytes);
    garbage.push({ label: peerLabel(socket), watch: watchClose(socket) });
  }

  const reply = await withDeadline(exchange(tlsd.port, alice, 'served despite the others\n'), 30_000, 'the normal client is served');
  t.equal(reply, 'served despite the others\n', 'a normal client completes its exchange');
  const stillOpen = stuck.filter((s) => !s.watch.closed).length;
  t.equal(stillOpen, stuck.length, 'while every silent or stalled connection is still open');

  await waitUntil(() => garbage.every((g) => g.watch.closed), 'tlsd closes the connections that sent garbage', tlsd);
  for (const { label } of garbage) {
    // The close can reach the client before tlsd's log line reaches us: waited for, not read at once.
    await t.resolves(tlsd.waitFor(new RegExp(`${label}: TLS handshake has failed`), 5_000), `a handshake failure is logged for ${label}`);
  }
});

t.test('--handshake-timeout: tlsd closes stalled handshakes once the deadline passes, and logs them', async (t) => {
  const timeoutSeconds = 2;
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog, options: ['--handshake-timeout', String(timeoutSeconds)] });
  const stuck = await openStuck(t, tlsd.port, 3);
  // The deadline is for failing only, far beyond the 2 s tlsd is asked for; each socket's fate is
  // asserted below.
  await waitUntil(() => stuck.every((s) => s.watch.closed), 'tlsd closes every stalled connection', tlsd, 15_000).catch(() => {});
  for (const s of stuck) {
    t.ok(s.watch.closed, `${s.kind}: tlsd closed the connection`);
    // Closing at once would be wrong too: that is refusing, not waiting for a slow client.
    if (s.watch.closedAt !== undefined) t.ok(s.watch.closedAt - s.opened >= timeoutSeconds * 1000 * 0.75, `${s.kind}: not before about the timeout`);
    await t.resolves(tlsd.waitFor(new RegExp(`${s.label}: TLS handshake has failed`), 5_000), `${s.kind}: the failure is logged with the peer address ${s.label}`);
  }
  t.equal(await exchange(tlsd.port, alice, 'after the timeouts\n'), 'after the timeouts\n', 'a normal client is served afterwards');
});

t.test('--max-peers 2: a third peer is refused without a child, and served once a slot frees', async (t) => {
  const marks = tempDir();
  t.teardown(() => rmSync(marks, { recursive: true, force: true }));
  const tlsd = await startTlsd(t, { identity: server, command: markAndEcho, env: { ...quietSyslog, MARKS: marks }, options: ['--max-peers', '2', ...patient] });
  const holders: TLSSocket[] = [];
  for (const [i, identity] of [alice, bob].entries()) {
    const socket = await connectTls(tlsd.port, identity);
    t.teardown(() => void socket.destroy());
    socket.write(`holder ${i}\n`);
    await readUntil(socket, `holder ${i}\n`);
    holders.push(socket);
  }
  t.equal(markers(marks, 'child.').length, 2, 'two children hold the two sessions');

  const third = await attempt(tlsd.port, alice, 'third\n');
  t.equal(third.data, '', 'the third peer gets nothing: its connection is closed');
  await tlsd.waitFor(new RegExp(`${peerLabel(third)}: connection refused: peer limit reached`));
  t.pass('tlsd logs the refusal with the peer address');
  await sleep(500); // a child that was wrongly started needs a moment to leave its mark
  t.equal(markers(marks, 'child.').length, 2, 'no child started for the refused peer');

  holders[0]!.end();
  await waitUntil(() => countMatches(tlsd.stderr(), /session ended/) >= 1, 'the first holder leaves', tlsd);
  t.equal(await exchange(tlsd.port, bob, 'next\n'), 'next\n', 'a new peer is served once a slot is free');
  t.equal(markers(marks, 'child.').length, 3, 'with a child of its own');
});

t.test('--max-peers 1: "host port" lines wait for a free slot, then connect in order', async (t) => {
  // Two targets, so that the order in which the lines connect shows.
  const first = await startTlsd(t, { identity: bob, command: ['cat'], env: quietSyslog, options: patient });
  const second = await startTlsd(t, { identity: bob, command: ['cat'], env: quietSyslog, options: patient });
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog, stdin: 'pipe', options: ['--max-peers', '1', ...patient] });
  const holder = await connectTls(tlsd.port, alice);
  t.teardown(() => void holder.destroy());
  holder.write('holding\n');
  await readUntil(holder, 'holding\n');

  tlsd.proc.stdin!.write(`127.0.0.1 ${first.port}\n127.0.0.1 ${second.port}\n`);
  await sleep(1500); // nothing may happen: give a wrong tlsd the time to do it anyway
  t.notMatch(tlsd.stderr(), /Connecting to|Skipped|Cannot connect/, 'while the slot is taken, neither line is dialed nor dropped');
  t.notMatch(first.stderr() + second.stderr(), /connected as SERVER/, 'neither target has been contacted');

  holder.end();
  const started = await first.waitFor(/started child (\d+)/, 15_000);
  t.pass('once the holder leaves, the first line connects');
  await sleep(1500);
  t.notMatch(second.stderr(), /connected as SERVER/, 'the second line still waits: one slot, taken by the first');

  // Ending the first dial's session from its far side frees the slot.
  process.kill(Number(started[1]), 'SIGTERM');
  await second.waitFor(/started child/, 15_000);
  t.pass('then the second line connects');
  const log = tlsd.stderr();
  const order = [log.indexOf(`Connecting to 127.0.0.1, port ${first.port}`), log.indexOf(`Connecting to 127.0.0.1, port ${second.port}`)];
  t.ok(order[0]! >= 0 && order[1]! > order[0]!, 'in the order of the lines', { order });
  t.equal(countMatches(log, /Connecting to/), 2, 'each line is dialed once');
});

t.test('--max-handshakes 2: connections beyond two pending handshakes are refused and logged', async (t) => {
  const tlsd: RunningTlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog, options: ['--max-handshakes', '2', ...patient] });
  // Accepted in the order they connected, so these two hold both handshake slots.
  const silent = [await rawConnect(t, tlsd.port), await rawConnect(t, tlsd.port)];
  const silentWatches = silent.map((socket) => watchClose(socket));
  const extra = await rawConnect(t, tlsd.port);
  const extraLabel = peerLabel(extra);
  await withDeadline(watchClose(extra).done, 15_000, 'tlsd closes the connection over the limit');
  await tlsd.waitFor(new RegExp(`${extraLabel}: connection refused: too many handshakes in progress \\(2\\)`));
  t.pass('the connection over the limit is closed and logged with its address');
  const refused = await attempt(tlsd.port, alice, 'too many\n');
  t.same({ secure: refused.secure, data: refused.data }, { secure: false, data: '' }, 'a TLS client gets no handshake while both slots are taken');
  t.notOk(silentWatches.some((w) => w.closed), 'the two pending handshakes are untouched');

  // When the clients of the pending handshakes go away, their slots must come back (tlsd's own
  // handshake timeout is 120 s here, far beyond the deadline of this retry loop).
  for (const socket of silent) socket.destroy();
  const served = await retryUntilServed(tlsd.port, 'slots are back\n', 15_000);
  t.equal(served.data, 'slots are back\n', 'a client is served once the pending handshakes are gone', { attempts: served.attempts });
  t.equal((await attempt(tlsd.port, bob, 'and again\n')).data, 'and again\n', 'and the next one too');
});

/** Tries a client every half second until one is served or `ms` pass; resolves with the last try. */
async function retryUntilServed(port: number, input: string, ms: number): Promise<{ data: string; attempts: number }> {
  const deadline = Date.now() + ms;
  for (let attempts = 1; ; attempts++) {
    const result = await attempt(port, alice, input);
    if (result.data === input || Date.now() > deadline) return { data: result.data, attempts };
    await sleep(500);
  }
}
