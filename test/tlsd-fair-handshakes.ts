import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import t, { type Test } from 'tap';
import { attempt, cast, countMatches, quietSyslog, rawConnect, refusalsLogged, settledStatus, statusOf, waitUntil, watchClose, withDeadline, type CloseWatch } from './lib/limits-faults.js';
import { startTlsd, type RunningTlsd } from './lib/tlsd.js';

const { server, alice } = cast(t);

interface Silent {
  socket: Socket;
  /** How tlsd names it in its log. */
  label: string;
  watch: CloseWatch;
}

/**
 * `count` TCP connections from `from` that never say hello, opened one after another, so that tlsd
 * accepts them in this order (the kernel's accept queue is first in, first out).
 */
async function openSilent(t: Test, port: number, from: string, count: number): Promise<Silent[]> {
  const opened: Silent[] = [];
  for (let i = 0; i < count; i++) {
    const socket = await rawConnect(t, port, { from });
    opened.push({ socket, label: `${from}:${socket.localPort}`, watch: watchClose(socket) });
  }
  return opened;
}

const closed = (silent: Silent[]): number => silent.filter((s) => s.watch.closed).length;
const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The soft limit on open files of a process, from /proc (Node raises its own to the hard limit). */
function openFilesLimit(pid: number | 'self'): number {
  const line = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))?.[1];
  return line === undefined || line === 'unlimited' ? Infinity : Number(line);
}

/**
 * Room for `need` descriptors in this process and the tlsd it starts (which inherits our limits):
 * raised with prlimit(1) when the hard limit is lower and we may (as root); otherwise the test
 * fails saying why, rather than failing later with EMFILE somewhere less clear.
 */
function ensureOpenFiles(t: Test, need: number): void {
  if (openFilesLimit('self') < need) spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${need}:${need}`]);
  t.ok(openFilesLimit('self') >= need, `the test may open ${need} files (ulimit -n is ${openFilesLimit('self')})`);
}

t.test('1,000 silent connections from 127.0.0.2 fill every handshake slot; a client from 127.0.0.1 is still served', async (t) => {
  const attackers = 1_000;
  const slots = 256; // --max-handshakes' default
  ensureOpenFiles(t, attackers + 1_000);
  // 60 s: no handshake times out during the test, so only eviction can let the client in.
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog, options: ['--handshake-timeout', '60'] });
  t.ok(openFilesLimit(tlsd.proc.pid!) >= attackers + 1_000, 'tlsd may open enough files too');

  const silent = await withDeadline(openSilent(t, tlsd.port, '127.0.0.2', attackers), 60_000, `${attackers} connections from 127.0.0.2`);
  await waitUntil(() => closed(silent) >= attackers - slots, 'tlsd refuses the connections beyond its handshake slots', tlsd, 30_000);
  t.equal(closed(silent), attackers - slots, `${attackers - slots} are refused as they come`);
  t.ok(silent.slice(0, slots).every((s) => !s.watch.closed), `the first ${slots} hold every slot`);
  t.same(await settledStatus(tlsd, { peers: 0, handshakes: slots }), { peers: 0, handshakes: slots }, `SIGUSR1: ${slots} handshakes in progress`);
  // A flood of refusals is counted, not listed: 50 lines in full, then one summary for the rest.
  const refusedLines = (): number => countMatches(tlsd.stderr(), /: connection refused: too many handshakes in progress/);
  t.equal(refusedLines(), 50, `${attackers - slots} refusals, 50 of them logged in full`);
  await tlsd.waitFor(new RegExp(`${attackers - slots - 50} more connection\\(s\\) refused in the last 10 s, the last: 127\\.0\\.0\\.2:\\d+: connection refused: too many handshakes in progress \\(${slots}\\)`), 20_000);
  t.equal(refusalsLogged(tlsd.stderr(), /connection refused: too many handshakes in progress/), attackers - slots, 'and the rest in one summary line, so that every refusal is counted');

  const client = await attempt(tlsd.port, alice, 'served anyway\n', 30_000);
  t.same({ secure: client.secure, data: client.data }, { secure: true, data: 'served anyway\n' }, 'the client from 127.0.0.1 completes its handshake and gets its child\'s output');

  const oldest = silent[0]!;
  await withDeadline(oldest.watch.done, 15_000, 'the oldest pending handshake of 127.0.0.2 is closed');
  t.equal(closed(silent.slice(0, slots)), 1, 'one connection of 127.0.0.2 made room: only one');
  const evicted = new RegExp(`${escape(oldest.label)}: handshake evicted to make room for 127\\.0\\.0\\.1:${client.localPort}: 127\\.0\\.0\\.2 held the most pending handshakes \\(${slots} of ${slots}\\)`);
  await tlsd.waitFor(evicted);
  t.pass('the eviction is logged with both addresses');
  t.notMatch(tlsd.stderr(), new RegExp(`${escape(oldest.label)}: TLS handshake has failed`), 'and not also as a failed handshake');

  await tlsd.waitFor(new RegExp(`127\\.0\\.0\\.1:${client.localPort}: session ended`));
  t.same(await statusOf(tlsd), { peers: 0, handshakes: slots - 1 }, 'SIGUSR1 counts exactly the handshakes still pending');
  for (const s of silent) s.socket.destroy();
  await waitUntil(() => countMatches(tlsd.stderr(), /TLS handshake has failed/) >= slots - 1, 'tlsd sees the other pending handshakes end', tlsd, 30_000);
  t.same(await statusOf(tlsd), { peers: 0, handshakes: 0 }, 'and none once they are gone');
});

t.test('two addresses share the slots evenly; evictions are summarised, the per-address counts stay exact', async (t) => {
  const slots = 20;
  const tlsd: RunningTlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog, options: ['--handshake-timeout', '60', '--max-handshakes', String(slots), '--max-per-ip', String(slots)] });
  const first = await openSilent(t, tlsd.port, '127.0.0.2', slots);
  t.same(await settledStatus(tlsd, { peers: 0, handshakes: slots }), { peers: 0, handshakes: slots }, '127.0.0.2 holds every slot');

  // Each newcomer from 127.0.0.3 displaces the oldest of 127.0.0.2, until both hold half:
  // displacing more would only make 127.0.0.3 the bigger holder.
  const second = await openSilent(t, tlsd.port, '127.0.0.3', slots);
  await waitUntil(() => closed(first) + closed(second) >= slots, 'tlsd evicts and refuses', tlsd);
  t.same(
    first.map((s) => s.watch.closed),
    first.map((_, i) => i < slots / 2),
    'the oldest half of 127.0.0.2 was evicted, the newest half is untouched',
  );
  t.same(
    second.map((s) => s.watch.closed),
    second.map((_, i) => i >= slots / 2),
    '127.0.0.3 got half the slots; its further connections were refused',
  );
  t.match(tlsd.stderr(), new RegExp(`${escape(first[0]!.label)}: handshake evicted to make room for ${escape(second[0]!.label)}: 127\\.0\\.0\\.2 held the most pending handshakes \\(${slots} of ${slots}\\)`), 'the first eviction is logged in full');
  t.equal(countMatches(tlsd.stderr(), /: handshake evicted to make room/), 1, 'only the first');
  t.equal(countMatches(tlsd.stderr(), /connection refused: too many handshakes in progress/), slots / 2, 'the refusals are logged as before');
  await tlsd.waitFor(new RegExp(`${slots / 2 - 1} more handshake\\(s\\) evicted in the last \\d+ s to make room for other addresses, the last from 127\\.0\\.0\\.2`), 20_000);
  t.pass('the others are summarised in one line');
  t.same(await statusOf(tlsd), { peers: 0, handshakes: slots }, 'SIGUSR1 counts every slot, no more');

  // --max-per-ip counted the evicted connections out: 127.0.0.2 may open as many again as it lost.
  for (const s of second) s.socket.destroy();
  await waitUntil(() => countMatches(tlsd.stderr(), /TLS handshake has failed/) >= slots / 2, 'the pending handshakes of 127.0.0.3 end', tlsd);
  const again = await openSilent(t, tlsd.port, '127.0.0.2', slots / 2);
  const over = await rawConnect(t, tlsd.port, { from: '127.0.0.2' });
  const overPort = over.localPort; // asked before it closes
  await withDeadline(watchClose(over).done, 15_000, 'the connection over --max-per-ip is closed');
  await tlsd.waitFor(new RegExp(`127\\.0\\.0\\.2:${overPort}: connection refused: too many connections from 127\\.0\\.0\\.2 \\(${slots}\\)`));
  t.equal(closed(again), 0, `127.0.0.2 has ${slots} connections again, the limit, and no more`);
  t.same(await statusOf(tlsd), { peers: 0, handshakes: slots }, 'SIGUSR1 agrees');
});
