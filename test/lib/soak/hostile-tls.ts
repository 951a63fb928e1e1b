import { connect as netConnect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConnectionOptions } from 'node:tls';
import { countMatches, realClientHello } from '../limits-faults.js';
import type { CaseContext, SoakCase } from './case.js';
import { eventually, killQuietly, settle, startSoakTlsd, status, track, type SoakTlsd } from './daemon.js';
import { childOf, labelOf, saidOf, sessionEnded } from './peer-log.js';
import { zooTlsd } from './faults-children.js';
import { warmUp } from './load.js';
import { clientOptions, describeLatency, echoSession, firstData, latency, pool, reportCanary, Rng, secureClient, writeOrWait, type CanaryReport } from './traffic.js';

interface Raw {
  socket: Socket;
  label: string;
  opened: number;
  /** When tlsd closed it (Date.now()), once it has. */
  closedAt?: number;
  received: number;
}

/** A plain TCP connection that sends `bytes` (then FIN, if asked) and notes when tlsd closes it. */
function raw(port: number, bytes: Buffer, fin: boolean): Promise<Raw> {
  return new Promise((resolve) => {
    const socket = netConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const entry: Raw = { socket, label: '', opened: Date.now(), received: 0 };
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => (entry.received += chunk.length));
    socket.once('close', () => {
      entry.closedAt ??= Date.now();
      resolve(entry); // refused before it could send: the case sees an entry closed at once
    });
    socket.once('end', () => {
      entry.closedAt ??= Date.now();
      socket.destroy();
    });
    socket.once('connect', () => {
      entry.label = labelOf(socket);
      socket.write(bytes, () => {
        if (fin) socket.end();
        resolve(entry);
      });
    });
  });
}

/** tlsd with the zoo command, a short handshake timeout, a canary, and usage tracking. */
async function target(ctx: CaseContext, timeoutSeconds: number) {
  return zooTlsd(ctx, { options: ['--handshake-timeout', String(timeoutSeconds)] });
}

/** After a hostile batch: every connection closed by tlsd in time, no child for any, slots freed. */
async function judge(ctx: CaseContext, tlsd: SoakTlsd, entries: Raw[], others: { stop(): Promise<CanaryReport> }, deadlineMs: number, what: string): Promise<void> {
  await eventually(() => entries.every((e) => e.closedAt !== undefined), deadlineMs);
  const open = entries.filter((e) => e.closedAt === undefined);
  ctx.tries += entries.length;
  ctx.check(open.length === 0, `${what}: tlsd closes every one (${entries.length}) within ${deadlineMs / 1000} s`, `${open.length} still open`);
  for (const e of open) e.socket.destroy();
  const report = await others.stop();
  reportCanary(ctx, report);
  // Only the warm-up and the canary's sessions may have started children.
  const started = countMatches(tlsd.stderr(), /: started child /);
  ctx.check(started === report.sessions + 1, `${what}: none of them gets a child`, `${started - report.sessions - 1} children beyond the ordinary sessions`);
  const log = tlsd.stderr();
  const logged = entries.filter((e) => saidOf(log, e.label, 'TLS handshake has failed') || saidOf(log, e.label, 'connection refused')).length;
  ctx.check(logged === entries.length, `${what}: each is logged with its address and the reason`, `${entries.length - logged} of ${entries.length} without a "TLS handshake has failed" line naming them (${countMatches(tlsd.stderr(), /unknown peer: TLS handshake has failed/)} lines say "unknown peer")`);
  await sleep(300);
  const table = await status(tlsd);
  ctx.check(table.handshakes === 0 && table.peers === 0, `${what}: no handshake slot is left taken`, `SIGUSR1: ${table.handshakes} handshakes, ${table.peers} peers`);
}

export const randomHandshakes: SoakCase = {
  id: 'hostile-random-handshakes',
  title: 'random bytes, mutated ClientHellos and random records (seeded), some ending with FIN, some silent',
  async run(ctx) {
    const count = ctx.profile.pick(60, 600);
    const rng = new Rng(41);
    const hello = await realClientHello();
    const { tlsd, tracker, others } = await target(ctx, 2);
    const entries: Raw[] = [];
    await pool(20, count, async (i) => {
      let bytes: Buffer;
      const kind = i % 3;
      if (kind === 0) bytes = rng.bytes(rng.int(1, 2048));
      else if (kind === 1) {
        bytes = Buffer.from(hello);
        for (let flips = rng.int(1, 8); flips > 0; flips--) bytes[rng.int(0, bytes.length - 1)] = rng.int(0, 255);
      } else {
        const body = rng.bytes(rng.int(0, 1024));
        bytes = Buffer.concat([Buffer.from([rng.pick([0x14, 0x15, 0x16, 0x17, 0x18]), 0x03, rng.int(0, 4)]), Buffer.from([body.length >> 8, body.length & 255]), body]);
      }
      entries.push(await raw(tlsd.port, bytes, rng.next() < 0.5));
    });
    await judge(ctx, tlsd, entries, others, 8_000, 'random input');
    await settle(ctx, tlsd, tracker);
  },
};

export const truncatedHandshakes: SoakCase = {
  id: 'hostile-truncated-handshakes',
  title: 'a real ClientHello cut short (seeded): with FIN closed at once, silent ones at the deadline',
  short: true,
  async run(ctx) {
    const count = ctx.profile.pick(40, 400);
    const timeout = 3;
    const rng = new Rng(42);
    const hello = await realClientHello();
    const { tlsd, tracker, others } = await target(ctx, timeout);
    const fin: Raw[] = [];
    const silent: Raw[] = [];
    await pool(20, count, async (i) => {
      const cut = hello.subarray(0, rng.int(1, hello.length - 1));
      (i % 2 === 0 ? fin : silent).push(await raw(tlsd.port, cut, i % 2 === 0));
    });
    await eventually(() => fin.every((e) => e.closedAt !== undefined), 5_000);
    const slow = fin.filter((e) => e.closedAt === undefined || e.closedAt - e.opened > 1_000);
    ctx.check(slow.length === 0, 'a cut ClientHello followed by FIN is closed at once (< 1 s), not at the deadline', `${slow.length} of ${fin.length} took longer: ${slow.slice(0, 3).map((e) => (e.closedAt === undefined ? 'still open' : `${e.closedAt - e.opened} ms`)).join(', ')}`);
    const early = silent.filter((e) => e.closedAt !== undefined && e.closedAt - e.opened < timeout * 1000 * 0.75);
    ctx.check(early.length === 0, 'a silent one is given its whole handshake timeout', `${early.length} closed early`);
    await judge(ctx, tlsd, [...fin, ...silent], others, (timeout + 5) * 1000, 'truncated ClientHellos');
    await settle(ctx, tlsd, tracker);
  },
};

export const plaintextHttp: SoakCase = {
  id: 'hostile-plaintext-http',
  title: 'plaintext HTTP requests to the TLS port',
  async run(ctx) {
    const count = ctx.profile.pick(30, 300);
    const { tlsd, tracker, others } = await target(ctx, 10);
    const requests = ['GET / HTTP/1.0\r\n\r\n', 'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n', 'POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello', 'CONNECT example.org:443 HTTP/1.1\r\n\r\n', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'];
    const entries: Raw[] = [];
    await pool(10, count, async (i) => {
      entries.push(await raw(tlsd.port, Buffer.from(requests[i % requests.length]!), false));
    });
    await eventually(() => entries.every((e) => e.closedAt !== undefined), 3_000);
    const slow = entries.filter((e) => e.closedAt === undefined || e.closedAt - e.opened > 1_000);
    ctx.check(slow.length === 0, 'each is closed at once (< 1 s), without waiting for the handshake timeout', `${slow.length} took longer`);
    const reason = /TLS handshake has failed: .*(http request|wrong version number|packet length too long|unknown protocol)/i.exec(tlsd.stderr())?.[0];
    ctx.note(`logged as: ${reason ?? 'no recognisable reason'}`);
    await judge(ctx, tlsd, entries, others, 12_000, 'HTTP');
    await settle(ctx, tlsd, tracker);
  },
};

/** After a complete handshake, bytes written straight to the TCP socket under the TLS layer. */
async function injectAfterHandshake(port: number, options: ConnectionOptions, junk: Buffer): Promise<{ label: string; socket: Socket; closed: Promise<number> }> {
  const socket = netConnect({ host: '127.0.0.1', port });
  socket.on('error', () => {});
  const tls = await secureClient({ ...options, socket });
  tls.write('hello\n');
  if (!(await firstData(tls, 10_000))) {
    socket.destroy();
    throw new Error('no echo within 10 s');
  }
  const started = Date.now();
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - started)));
  socket.write(junk);
  return { label: labelOf(socket), socket, closed };
}

export const oversizedRecords: SoakCase = {
  id: 'hostile-oversized-records',
  title: 'oversized TLS records and a 16 MiB handshake message, before and after the handshake',
  short: true,
  async run(ctx) {
    const each = ctx.profile.pick(10, 100);
    const rng = new Rng(43);
    const { tlsd, tracker, others } = await target(ctx, 10);
    // Before the handshake: a record of 65535 bytes (the limit is 16 KiB + 2 KiB), and a
    // ClientHello whose header claims 16 MiB, followed by 2 MiB of it.
    const entries: Raw[] = [];
    await pool(10, each, async () => {
      entries.push(await raw(tlsd.port, Buffer.concat([Buffer.from([0x16, 0x03, 0x03, 0xff, 0xff]), rng.bytes(65_535)]), false));
      const claim = Buffer.from([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff, 0x03, 0x03]);
      const stream = Buffer.concat([claim, rng.bytes(16_384 - 6)]);
      const big = await raw(tlsd.port, stream, false);
      for (let sent = 0; sent < 2 << 20 && big.closedAt === undefined; sent += 16_389) {
        await writeOrWait(big.socket, Buffer.concat([Buffer.from([0x16, 0x03, 0x03, 0x40, 0x00]), rng.bytes(16_384)]), 1_000);
      }
      entries.push(big);
    });
    const peak = tracker.peak();
    ctx.check(peak.rssMiB - tracker.before.rssMiB < 64, 'tlsd does not buffer what the oversized messages claim', `RSS ${tracker.before.rssMiB} → ${peak.rssMiB} MiB`);
    await eventually(() => entries.every((e) => e.closedAt !== undefined), 3_000);
    const slow = entries.filter((e) => e.closedAt === undefined || e.closedAt - e.opened > 2_000);
    ctx.check(slow.length === 0, 'each is closed at once, not at the handshake deadline', `${slow.length} of ${entries.length} took longer`);
    await judge(ctx, tlsd, entries, others, 12_000, 'oversized records before the handshake');

    // After the handshake: an oversized application-data record inside an established session.
    // tlsd must end the session at once; at the latest when the peer then closes its socket.
    const options = clientOptions(tlsd.port, ctx.cast.alice, { servername: 'echo.test' });
    let turnedAway = 0;
    const tried = await Promise.all(
      Array.from({ length: each }, async (_, i) => {
        await sleep(i * 20);
        let injected: Awaited<ReturnType<typeof injectAfterHandshake>>;
        try {
          injected = await injectAfterHandshake(tlsd.port, options, Buffer.concat([Buffer.from([0x17, 0x03, 0x03, 0xff, 0xff]), rng.bytes(65_535)]));
        } catch {
          turnedAway++;
          return undefined;
        }
        const ms = await Promise.race([injected.closed, sleep(3_000).then(() => -1)]);
        injected.socket.destroy(); // the peer gives up: tlsd must notice that at least
        const ended = await eventually(() => sessionEnded(tlsd.stderr(), injected.label), 10_000);
        return { label: injected.label, ms, ended };
      }),
    );
    const after = tried.filter((a) => a !== undefined);
    ctx.tries += each;
    ctx.sessionFailures += turnedAway;
    ctx.check(turnedAway === 0, 'every such session gets started (64 slots, sessions that end free theirs)', `${turnedAway} of ${each} turned away: ${countMatches(tlsd.stderr(), /peer limit reached/)} "peer limit reached" lines`);
    ctx.check(after.every((a) => a.ms >= 0), 'an oversized record inside a session makes tlsd close that connection at once (< 3 s)', `${after.filter((a) => a.ms < 0).length} of ${after.length} still open after 3 s`);
    const logged = after.filter((a) => saidOf(tlsd.stderr(), a.label, /^connection error: .*(record|length|overflow)/i)).length;
    ctx.check(logged === after.length, 'and logs the reason', `${logged} of ${after.length}: ${/connection error: .*/.exec(tlsd.stderr())?.[0] ?? 'no connection error line'}`);
    ctx.check(after.every((a) => a.ended), 'the session, child and all, ends, at the latest once the peer closes its socket', `${after.filter((a) => !a.ended).length} of ${after.length} sessions still open 10 s after their peer closed (tlsd logged the TLS error and left the socket open: the child never gets EOF, the slot and descriptor stay taken)`);
    // So that what follows is measured on its own: the children of sessions tlsd left hanging go.
    for (const pid of after.filter((a) => !a.ended).map((a) => childOf(tlsd.stderr(), a.label))) if (pid !== undefined) killQuietly(pid);
    await settle(ctx, tlsd, tracker);
  },
};

export const slowloris: SoakCase = {
  id: 'hostile-slowloris',
  title: '100 slowloris handshakes (a ClientHello a byte at a time) while normal clients keep their latency',
  short: true,
  async run(ctx) {
    const timeout = ctx.profile.pick(5, 10);
    const samples = ctx.profile.pick(20, 100);
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: ['cat'], options: ['--handshake-timeout', String(timeout)] });
    await warmUp(ctx, tlsd.port);
    const tracker = track(tlsd.pid);
    const rng = new Rng(44);
    const measure = async (): Promise<number[]> => {
      const times: number[] = [];
      for (let i = 0; i < samples; i++) {
        const outcome = await echoSession(tlsd.port, ctx.cast.alice, rng.bytes(rng.int(1, 4096)));
        ctx.tries++;
        if (!outcome.ok) ctx.sessionFailures++;
        times.push(outcome.ms);
        await sleep(20);
      }
      return times;
    };
    const quiet = latency(await measure());
    const hello = await realClientHello();
    const loris: Raw[] = await Promise.all(Array.from({ length: 100 }, () => raw(tlsd.port, hello.subarray(0, 1), false)));
    let offset = 1;
    const drip = setInterval(() => {
      for (const l of loris) if (l.closedAt === undefined) l.socket.write(hello.subarray(offset, offset + 1));
      offset = Math.min(offset + 1, hello.length - 2);
    }, 100);
    ctx.teardown(() => clearInterval(drip));
    const busy = latency(await measure());
    const table = await status(tlsd);
    const allowed = Math.max(quiet.p95 * 3, quiet.p95 + 100);
    ctx.check(busy.p95 <= allowed, `normal clients keep their latency: p95 ${busy.p95} ms ≤ ${allowed} ms`, `quiet: ${describeLatency(quiet)}; with 100 slowloris: ${describeLatency(busy)}`);
    ctx.note(`quiet ${describeLatency(quiet)}; with 100 slowloris handshakes (${table.handshakes} in progress at the end): ${describeLatency(busy)}`);
    await eventually(() => loris.every((l) => l.closedAt !== undefined), (timeout + 5) * 1000);
    clearInterval(drip);
    ctx.tries += loris.length;
    const lasted = loris.filter((l) => l.closedAt !== undefined).map((l) => l.closedAt! - l.opened);
    ctx.check(lasted.length === loris.length && Math.min(...lasted) >= timeout * 750, `tlsd closes every slowloris at its ${timeout} s deadline`, `${loris.length - lasted.length} still open; closed after ${Math.min(...lasted)}–${Math.max(...lasted)} ms`);
    const logged = loris.filter((l) => saidOf(tlsd.stderr(), l.label, 'TLS handshake has failed')).length;
    ctx.check(logged === loris.length, 'each is logged as a failed handshake, with its address', `${logged} of ${loris.length}`);
    await settle(ctx, tlsd, tracker);
  },
};
