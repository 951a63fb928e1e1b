import { setTimeout as sleep } from 'node:timers/promises';
import { childrenOf, countMatches, refusalsLogged } from '../limits-faults.js';
import type { CaseContext, SoakCase } from './case.js';
import { alive, descendants, eventually, killQuietly, settle, startSoakTlsd, track, type SoakStart, type SoakTlsd } from './daemon.js';
import { warmUp } from './load.js';
import { childOf, labelOf, story } from './peer-log.js';
import { canary, converse, pool, reportCanary, resettable, Rng, type Conversation } from './traffic.js';

/**
 * One command for every fault: the client picks the child's behaviour by the server name it sends
 * (SNI, which tlsd passes as SSL_TLS_SNI_SERVERNAME), so normal sessions share the daemon with
 * the faulty ones. `echo.*` and anything unknown is cat.
 */
export const zoo = [
  'sh',
  '-c',
  `ulimit -c 0
case "$SSL_TLS_SNI_SERVERNAME" in
  exit.*) exit 0 ;;
  crash.*) kill -SEGV $$ ;;
  crashlate.*) head -c 4096 >/dev/null; kill -SEGV $$ ;;
  noread.*) echo ready; sleep 2; echo done ;;
  noexit.*) cat >/dev/null; exec sleep 3600 ;;
  bomb.*) for i in 1 2 3 4; do sleep 3 </dev/null >/dev/null 2>&1 & done; exec cat ;;
  hash.*) sha256sum | cut -c1-64; head -c 1048576 /dev/zero ;;
  chatty.*) cat /dev/zero & cat >/dev/null; kill $! ;;
  forever.*) exec cat /dev/zero ;;
  *) exec cat ;;
esac`,
];

/**
 * A tlsd running the zoo, warmed up, with its usage tracked and an ordinary client load on it. With
 * -s, those clients end their side only once their echo is back: the signal comes with the end.
 */
export async function zooTlsd(ctx: CaseContext, start: Partial<SoakStart> = {}) {
  const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: zoo, ...start });
  const endAfterEcho = start.options?.includes('-s') ?? false;
  await warmUp(ctx, tlsd.port, 'echo.test', endAfterEcho);
  const tracker = track(tlsd.pid);
  const others = canary(tlsd.port, ctx.cast.bob, { workers: 2, pauseMs: ctx.profile.pick(100, 20), endAfterEcho });
  return { tlsd, tracker, others };
}

/** Many peers whose children misbehave in the same way, a few at a time. */
async function crowd(ctx: CaseContext, tlsd: SoakTlsd, count: number, servername: (i: number) => string, payload: (i: number) => Buffer, width = 8): Promise<Conversation[]> {
  const results: Conversation[] = [];
  await pool(width, count, async (i) => {
    results.push(await converse(tlsd.port, ctx.cast.alice, { servername: servername(i), payload: payload(i), ms: 30_000 }));
  });
  ctx.tries += count;
  return results;
}

/** Each conversation ended with the server's own end, and nothing that looks like a hang. */
function endedCleanly(ctx: CaseContext, results: Conversation[], what: string): void {
  const bad = results.filter((r) => !r.secure || !r.ended || (r.error !== undefined && !/ECONNRESET|EPIPE/.test(r.error)));
  ctx.sessionFailures += bad.length;
  ctx.check(bad.length === 0, what, bad.slice(0, 3).map((r) => `secure ${r.secure}, ended ${r.ended}, ${r.error ?? ''}`).join('; '));
}

export const childExitsAtOnce: SoakCase = {
  id: 'child-exits-at-once',
  title: 'children that exit at once, while their peer sends up to 256 KiB',
  async run(ctx) {
    const count = ctx.profile.pick(30, 300);
    const rng = new Rng(11);
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    const results = await crowd(ctx, tlsd, count, () => 'exit.test', () => rng.bytes(rng.int(1, 262_144)));
    endedCleanly(ctx, results, 'each peer sees its connection end by itself');
    const exits = /^\S+: Process \d+ has exited with status 0$/gm;
    await eventually(() => countMatches(tlsd.stderr(), exits) >= count, 5_000);
    const log = tlsd.stderr();
    ctx.check(countMatches(log, exits) >= count, `tlsd logs each child's exit (${count})`, `${countMatches(log, exits)} lines`);
    reportCanary(ctx, await others.stop());
    await settle(ctx, tlsd, tracker);
  },
};

export const childCrashes: SoakCase = {
  id: 'child-crashes',
  title: 'children killed by SIGSEGV at once or after reading 4 KiB',
  async run(ctx) {
    const count = ctx.profile.pick(20, 200);
    const rng = new Rng(12);
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    const results = await crowd(ctx, tlsd, count, (i) => (i % 2 === 0 ? 'crash.test' : 'crashlate.test'), () => rng.bytes(rng.int(1, 65_536)));
    endedCleanly(ctx, results, 'each peer sees its connection end by itself');
    const crashes = (): number => countMatches(tlsd.stderr(), /^\S+: Process \d+ was terminated by signal 11$/m);
    await eventually(() => crashes() >= count, 5_000);
    const logged = crashes();
    ctx.check(logged === count, `tlsd logs each crash with its signal (${count})`, `${logged} "was terminated by signal 11" (SIGSEGV) lines`);
    reportCanary(ctx, await others.stop());
    await settle(ctx, tlsd, tracker);
  },
};

export const childNeverReads: SoakCase = {
  id: 'child-never-reads',
  title: 'children that never read stdin while each peer pushes MiBs: output kept, memory bounded',
  async run(ctx) {
    const count = ctx.profile.pick(10, 50);
    const push = ctx.profile.pick(1, 4) * 1024 * 1024;
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    const results: Conversation[] = [];
    await pool(count, count, async () => {
      results.push(await converse(tlsd.port, ctx.cast.alice, { servername: 'noread.test', payload: Buffer.alloc(push, 'n'), ms: 60_000 }));
    });
    ctx.tries += count;
    const wrong = results.filter((r) => r.data.toString() !== 'ready\ndone\n' || !r.ended);
    ctx.sessionFailures += wrong.length;
    ctx.check(wrong.length === 0, 'every peer gets the whole output of a child that never read its input', wrong.slice(0, 3).map((r) => `${JSON.stringify(r.data.toString())} ${r.error ?? ''}`).join('; '));
    const peak = tracker.peak();
    const pushed = (count * push) / 1024 / 1024;
    ctx.check(peak.rssMiB - tracker.before.rssMiB < 64, `tlsd does not hold what the peers push (${pushed} MiB in all)`, `RSS ${tracker.before.rssMiB} → ${peak.rssMiB} MiB`);
    reportCanary(ctx, await others.stop());
    await settle(ctx, tlsd, tracker);
  },
};

/** Children that never exit after EOF: -s ends them when their peer goes, and shutdown does. */
export const childNeverExits: SoakCase = {
  id: 'child-never-exits',
  title: 'children that never exit after EOF: -s TERM ends them when the peer goes; shutdown ends them',
  short: true,
  async run(ctx) {
    const count = ctx.profile.pick(8, 40);
    const { tlsd, tracker, others } = await zooTlsd(ctx, { options: ['-s', 'TERM'] });
    /** Peers whose children have started (by their "started child" lines), and those children. */
    const startPeers = async (port: number, log: () => string): Promise<{ peers: Array<Awaited<ReturnType<typeof resettable>>>; pids: number[] }> => {
      const peers = await Promise.all(Array.from({ length: count }, () => resettable(port, ctx.cast.alice, 'noexit.test')));
      const labels = peers.map((peer) => labelOf(peer.raw));
      for (const peer of peers) peer.tls.write('hello\n');
      const started = (): number[] => labels.map((label) => childOf(log(), label)).filter((pid) => pid !== undefined);
      ctx.check(await eventually(() => started().length === count, 10_000), `all ${count} children start`, `${started().length} "started child" lines`);
      return { peers, pids: started() };
    };
    const log = (): string => tlsd.stderr();

    // 1. Peers that reset while their children still read: -s TERM ends each child.
    const resetting = await startPeers(tlsd.port, log);
    for (const peer of resetting.peers) peer.reset();
    ctx.tries += count;
    ctx.check(await eventually(() => resetting.pids.every((pid) => !alive(pid)), 10_000), 'peers that reset: -s TERM ends every child', `${resetting.pids.filter(alive).length} of ${count} still alive`);
    const terms = (): number => resetting.pids.filter((pid) => log().includes(`: Process ${pid} was terminated by signal 15\n`)).length;
    await eventually(() => terms() === count, 5_000);
    ctx.check(terms() === count, 'each is logged as terminated by SIGTERM (15)', `${terms()} of ${count}`);

    // 2. Peers that half-close: their children's input ends there, and -s TERM goes with it (the
    // children would otherwise sleep on after EOF); a reset after that sends no second signal.
    const halfClosing = await startPeers(tlsd.port, log);
    for (const peer of halfClosing.peers) peer.tls.end('bye\n');
    ctx.tries += count;
    const patience = 10; // seconds: a busy machine does not fail a tlsd that signals at once
    const gone = await eventually(() => halfClosing.pids.every((pid) => !alive(pid)), patience * 1000);
    const example = halfClosing.peers.map((peer) => labelOf(peer.raw)).find((label) => halfClosing.pids.some((pid) => alive(pid) && childOf(log(), label) === pid));
    ctx.check(gone, 'peers that half-close: -s TERM ends every child with the end of its input', `${halfClosing.pids.filter(alive).length} of ${count} children still alive ${patience} s after their peer ended its side; e.g. ${example ? story(log(), example) : '?'}`);
    for (const peer of halfClosing.peers) peer.reset();
    for (const pid of halfClosing.pids) killQuietly(pid); // so that what follows is measured on its own
    reportCanary(ctx, await others.stop());
    await settle(ctx, tlsd, tracker);

    // 3. Shutdown, with -s TERM and without, while peers hold their connections open: at EOF the
    // children exec sleep, which does not keep tlsd forever.
    for (const withSignal of [true, false]) {
      const label = withSignal ? 'with -s TERM' : 'without -s';
      const daemon = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: zoo, options: withSignal ? ['-s', 'TERM'] : [] });
      const held = await startPeers(daemon.port, () => daemon.stderr());
      ctx.tries += count;
      daemon.signal('SIGTERM');
      const exit = await Promise.race([daemon.exited, sleep(withSignal ? 10_000 : 2_000).then(() => 'still running')]);
      if (withSignal) {
        ctx.check(exit === 0, `${label}: SIGTERM ends the children and tlsd exits 0`, `exit ${exit}`);
      } else {
        ctx.check(exit === 'still running', `${label}: SIGTERM waits for children that do not exit`, `exit ${exit}`);
        daemon.signal('SIGTERM');
        const second = await Promise.race([daemon.exited, sleep(10_000).then(() => 'still running')]);
        ctx.check(second === 1, `${label}: a second SIGTERM kills them and tlsd exits 1`, `exit ${second}`);
      }
      ctx.check(await eventually(() => held.pids.every((pid) => !alive(pid)), 5_000), `${label}: no child outlives tlsd`, `${held.pids.filter(alive).length} alive`);
      for (const peer of held.peers) peer.reset();
    }
  },
};

/** A flood of peers whose children each fork four more: tlsd's children never exceed --max-peers. */
export const forkBomb: SoakCase = {
  id: 'fork-bomb',
  title: 'a flood of peers whose children fork, bounded by --max-peers',
  async run(ctx) {
    const limit = ctx.profile.pick(8, 32);
    const flood = limit * 4;
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: zoo, options: ['--max-peers', String(limit)] });
    await warmUp(ctx, tlsd.port, 'echo.test');
    const tracker = track(tlsd.pid);
    let maxChildren = 0;
    let maxBelow = 0;
    const sampler = setInterval(() => {
      maxChildren = Math.max(maxChildren, childrenOf(tlsd.pid).length);
      maxBelow = Math.max(maxBelow, descendants(tlsd.pid).length);
    }, 50);
    const attempts = await Promise.all(
      Array.from({ length: flood }, () =>
        resettable(tlsd.port, ctx.cast.alice, 'bomb.test').then(
          (peer) => peer,
          () => undefined,
        ),
      ),
    );
    ctx.tries += flood;
    await sleep(1500);
    const open = attempts.filter((peer) => peer && !peer.tls.destroyed && !peer.raw.destroyed);
    clearInterval(sampler);
    ctx.check(maxChildren <= limit, `tlsd never has more than ${limit} children`, `peak ${maxChildren}`);
    ctx.check(maxBelow <= limit * 6, `nor more than ${limit} × 6 processes below it`, `peak ${maxBelow}`);
    // Beyond 50 a second, refusals are summarised at the end of a 10 s interval.
    const refusalCount = (): number => refusalsLogged(tlsd.stderr(), /connection refused: peer limit reached/);
    await eventually(() => refusalCount() >= flood - limit, 12_000);
    const refused = refusalCount();
    ctx.check(refused >= flood - limit, `the peers over the limit are refused and logged (${flood - limit})`, `${refused} refusals logged, ${open.length} connections still open`);
    ctx.note(`${flood} peers at once against --max-peers ${limit}: peak ${maxChildren} children, ${maxBelow} processes below tlsd, ${refused} refused`);
    for (const peer of attempts) peer?.tls.end();
    await eventually(() => childrenOf(tlsd.pid).length === 0, 15_000);
    const after = await converse(tlsd.port, ctx.cast.bob, { servername: 'echo.test', payload: Buffer.from('after the flood\n') });
    ctx.check(after.data.toString() === 'after the flood\n', 'a peer is served once the flood is over');
    await settle(ctx, tlsd, tracker);
  },
};
