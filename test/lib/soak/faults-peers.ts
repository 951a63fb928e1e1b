import { execFileSync } from 'node:child_process';
import { createServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SoakCase } from './case.js';
import { countMatches, refusalsLogged } from '../limits-faults.js';
import { eventually, settle, status } from './daemon.js';
import { zooTlsd } from './faults-children.js';
import { awaitEnded, labelOf, saidOf, sessionEnded, story } from './peer-log.js';
import { clientOptions, converse, pool, reportCanary, resettable, Rng, secureClient, sha256, writeOrWait, type Conversation } from './traffic.js';
import { resetSocket } from '../tcp-reset.js';

export const peersReset: SoakCase = {
  id: 'peer-resets',
  title: 'peers that reset at a random point of a transfer both ways',
  short: true,
  async run(ctx) {
    const count = ctx.profile.pick(20, 200);
    const rng = new Rng(21);
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    const labels: string[] = [];
    const turnedAway: string[] = [];
    await pool(8, count, async () => {
      let peer: Awaited<ReturnType<typeof resettable>>;
      try {
        peer = await resettable(tlsd.port, ctx.cast.alice, 'echo.test');
      } catch (error) {
        turnedAway.push((error as Error).message);
        return;
      }
      labels.push(labelOf(peer.raw));
      const total = rng.int(1, 1 << 20);
      const resetAt = rng.int(0, total);
      let received = 0;
      peer.tls.on('data', (chunk: Buffer) => (received += chunk.length));
      const chunk = rng.bytes(16_384);
      for (let sent = 0; sent < resetAt; sent += chunk.length) {
        await writeOrWait(peer.tls, chunk, 5_000);
      }
      // Half of them wait for some of the echo first, so that tlsd is sending when the reset comes.
      if (rng.next() < 0.5) await eventually(() => received > 0, 2_000);
      peer.reset();
    });
    ctx.tries += count;
    ctx.sessionFailures += turnedAway.length;
    const limitHits = refusalsLogged(tlsd.stderr(), /connection refused: peer limit reached/);
    ctx.check(turnedAway.length === 0, 'no peer is turned away while others reset (8 at a time, 64 slots)', `${turnedAway.length} of ${count} could not even start; tlsd logged ${limitHits} "peer limit reached": the slots of reset sessions are not given back`);
    reportCanary(ctx, await others.stop());
    // Nobody else is connected now: tlsd's table must empty once the reset sessions are over.
    let table = await status(tlsd);
    for (let waited = 0; waited < ctx.profile.pick(12_000, 25_000) && (table.peers > 0 || table.handshakes > 0); waited += 1_000) {
      await sleep(1_000);
      table = await status(tlsd);
    }
    const log = tlsd.stderr();
    const missing = labels.filter((label) => !sessionEnded(log, label));
    ctx.check(table.peers === 0 && table.handshakes === 0, `every reset session ends: its child, slot and descriptor are freed (${count} resets)`, `${ctx.profile.pick(12, 25)} s later SIGUSR1 still lists ${table.peers} peer(s) and ${table.handshakes} handshake(s): ${table.lines.slice(0, 3).join(' | ')}; e.g. ${missing.filter((label) => story(log, label) !== '').slice(0, 2).map((label) => story(log, label)).join(' ;; ')}`);
    const unknown = countMatches(tlsd.stderr(), /unknown peer: /);
    ctx.check(unknown === 0, 'every log line names the peer by its address', `${unknown} lines say "unknown peer" (the address was asked for after the reset)`);
    const errors = labels.filter((label) => saidOf(log, label, /^connection error: .*(ECONNRESET|reset)/i)).length;
    ctx.note(`${count} peers reset mid-transfer; ${errors} logged as "connection error … ECONNRESET", ${missing.length} without "session ended"`);
    await settle(ctx, tlsd, tracker);
  },
};

export const peersHalfClose: SoakCase = {
  id: 'peer-half-closes',
  title: 'peers that half-close and keep reading a reply made after EOF (hash + 1 MiB)',
  async run(ctx) {
    const count = ctx.profile.pick(10, 100);
    const rng = new Rng(22);
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    const tail = 1 << 20;
    const results: Array<{ payload: Buffer; reply: Conversation }> = [];
    await pool(10, count, async () => {
      const payload = rng.bytes(rng.int(0, 1 << 20));
      results.push({ payload, reply: await converse(tlsd.port, ctx.cast.alice, { servername: 'hash.test', payload, ms: 60_000 }) });
    });
    ctx.tries += count;
    let wrong = 0;
    for (const { payload, reply } of results) {
      const expected = Buffer.concat([Buffer.from(`${sha256(payload)}\n`), Buffer.alloc(tail)]);
      if (!reply.ended || !reply.data.equals(expected)) {
        wrong++;
        ctx.bytesLost += Math.max(0, expected.length - reply.data.length);
      }
    }
    ctx.sessionFailures += wrong;
    ctx.check(wrong === 0, 'every half-closed peer gets the hash of all it sent, then the whole reply, then a clean end', `${wrong} of ${count} wrong`);
    reportCanary(ctx, await others.stop());
    await settle(ctx, tlsd, tracker);
  },
};

interface Relay {
  port: number;
  /** tlsd's view of each relayed connection: the relay's local port towards tlsd. */
  upstreamPorts(): number[];
  /** Stops forwarding and reading on every connection, without closing anything. */
  vanish(): void;
  /** Resets the connections to tlsd, as TCP does once it gives up on a peer. */
  reset(): void;
  close(): void;
}

/** A TCP relay between clients and tlsd that can go silent: a peer that vanished without a FIN. */
function relay(target: number): Promise<Relay> {
  const pairs: Array<[Socket, Socket]> = [];
  const ports: number[] = [];
  const server = createServer((client) => {
    const upstream = netConnect({ host: '127.0.0.1', port: target }, () => ports.push(upstream.localPort!));
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.pipe(upstream);
    upstream.pipe(client);
    pairs.push([client, upstream]);
  });
  const reset = (): void => {
    for (const [client, upstream] of pairs) {
      resetSocket(upstream);
      client.destroy();
    }
  };
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as AddressInfo).port,
        upstreamPorts: () => [...ports],
        vanish() {
          for (const [client, upstream] of pairs) {
            client.unpipe(upstream);
            upstream.unpipe(client);
            client.pause();
            upstream.pause();
          }
        },
        reset,
        close() {
          reset();
          server.close();
        },
      }),
    );
  });
}

/** `ss` lines of tlsd's established connections, with their timers. */
function tcpTimers(port: number): string {
  try {
    return execFileSync('ss', ['-tnoH', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

export const peersVanish: SoakCase = {
  id: 'peer-vanishes',
  title: 'peers that vanish without FIN while their children keep writing',
  async run(ctx) {
    const count = ctx.profile.pick(4, 16);
    const silentMs = ctx.profile.pick(3_000, 10_000);
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    const middle = await relay(tlsd.port);
    ctx.teardown(() => middle.close());
    const clients = await Promise.all(Array.from({ length: count }, () => secureClient(clientOptions(middle.port, ctx.cast.alice, { servername: 'chatty.test' }))));
    let received = 0;
    for (const client of clients) client.on('data', (chunk: Buffer) => (received += chunk.length));
    ctx.tries += count;
    await eventually(() => received > count * 4_000_000, 10_000);
    const flowing = received;
    middle.vanish();
    const base = tracker.before.rssMiB;
    await sleep(silentMs);
    const peak = tracker.peak();
    ctx.check(peak.rssMiB - base < 64, `while ${count} children keep writing to vanished peers, tlsd's memory stays bounded`, `RSS ${base} → ${peak.rssMiB} MiB`);
    const labels = middle.upstreamPorts().map((port) => `127.0.0.1:${port}`); // the relay is tlsd's peer
    const listed = (await status(tlsd)).lines.filter((line) => labels.some((label) => line.includes(` ${label} `))).length;
    ctx.note(`${count} peers vanished after ${Math.round(flowing / 1e6)} MB had flowed; ${silentMs / 1000} s later tlsd still lists ${listed} of them (it cannot tell a vanished peer from a slow one)`);
    ctx.check(tlsd.running(), 'tlsd stays up');

    // A vanished idle peer is only ever noticed through TCP keepalive: is it on?
    const idle = await resettable(tlsd.port, ctx.cast.bob, 'echo.test');
    await sleep(300);
    const line = tcpTimers(tlsd.port)
      .split('\n')
      .find((l) => l.includes(`:${idle.raw.localPort} `) || l.endsWith(`:${idle.raw.localPort}`) || l.includes(`:${idle.raw.localPort}\t`));
    ctx.check(/keepalive/.test(line ?? ''), 'tlsd turns TCP keepalive on for its connections, so that a peer that vanished while idle is noticed eventually', `ss -to shows: ${line?.trim().replace(/\s+/g, ' ') ?? 'no line'}`);
    idle.reset();

    middle.reset();
    const missing = await awaitEnded(tlsd.stderr, labels, 15_000);
    ctx.check(labels.length === count && missing.length === 0, 'once TCP reports the vanished peers gone (reset), their sessions and children end', `${missing.length} of ${labels.length} without "session ended"`);
    reportCanary(ctx, await others.stop());
    await settle(ctx, tlsd, tracker);
  },
};
