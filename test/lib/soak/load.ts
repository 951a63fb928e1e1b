import { countMatches } from '../limits-faults.js';
import type { CaseContext, SoakCase } from './case.js';
import { eventually, settle, startSoakTlsd, status, track, usage, type SoakTlsd, type Usage } from './daemon.js';
import { describeLatency, echoSession, latency, Rng, tally, type Outcome } from './traffic.js';

const KiB = 1024;

/** Sessions one after another, each a random payload through `cat` and back, checked by hash. */
export const sequentialLoad: SoakCase = {
  id: 'load-sequential',
  title: 'sessions in sequence, random payload both ways through cat',
  short: true,
  timeoutMs: 900_000,
  async run(ctx) {
    const rounds = 4;
    const perRound = ctx.profile.pick(40, 2500);
    const maxBytes = ctx.profile.pick(16 * KiB, 64 * KiB);
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: ['cat'] });
    await warmUp(ctx, tlsd.port);
    const tracker = track(tlsd.pid);
    const rng = new Rng(1);
    const times: number[] = [];
    const errors: string[] = [];
    let bytes = 0;
    const afterRounds = await inRounds(ctx, tlsd, rounds, perRound, async () => {
      for (let i = 0; i < perRound; i++) {
        const outcome = await echoSession(tlsd.port, ctx.cast.alice, rng.bytes(rng.int(1, maxBytes)));
        record(ctx, outcome, times, errors);
        bytes += outcome.sent;
      }
    });
    allIntact(ctx, rounds * perRound, errors);
    ctx.note(`${rounds} × ${perRound} sessions, ${mib(bytes)} MiB each way; ${describeLatency(latency(times))}`);
    noGrowth(ctx, tracker.before, afterRounds);
    await settle(ctx, tlsd, tracker, { rss: 'rounds' });
  },
};

/** Many sessions open at the same moment (held at a barrier until tlsd reports them all), then moving data. */
export const concurrentLoad: SoakCase = {
  id: 'load-concurrent',
  title: 'sessions at once (--max-peers and ulimit -n raised), random payload both ways',
  short: true,
  timeoutMs: 900_000,
  async run(ctx) {
    const rounds = ctx.profile.pick(2, 4);
    const sessions = ctx.profile.pick(100, 1000);
    const maxBytes = ctx.profile.pick(16 * KiB, 64 * KiB);
    const limit = String(sessions + 16);
    const tlsd = await startSoakTlsd(ctx, {
      identity: ctx.cast.server,
      command: ['cat'],
      nofile: Math.max(4096, sessions * 8),
      options: ['--max-peers', limit, '--max-handshakes', limit, '--handshake-timeout', '60'],
    });
    await warmUp(ctx, tlsd.port);
    const tracker = track(tlsd.pid);
    const rng = new Rng(2);
    const errors: string[] = [];
    const peaks: number[] = [];
    const transfers: number[] = [];
    let bytes = 0;
    const afterRounds = await inRounds(ctx, tlsd, rounds, sessions, async () => {
      const payloads = Array.from({ length: sessions }, () => rng.bytes(rng.int(1, maxBytes)));
      bytes += payloads.reduce((sum, p) => sum + p.length, 0);
      let arrived = 0;
      let release: () => void = () => {};
      const gate = new Promise<void>((resolve) => (release = resolve));
      const running = payloads.map((payload) =>
        echoSession(tlsd.port, ctx.cast.alice, payload, {
          ms: 180_000,
          afterHandshake: async () => {
            arrived++;
            await gate;
          },
        }),
      );
      await eventually(() => arrived === sessions, 90_000);
      // Every client has its handshake; tlsd counts a peer once its own side is done and a child runs.
      let peers = 0;
      for (let tries = 0; tries < 40 && peers < sessions; tries++) {
        peers = (await status(tlsd)).peers;
        if (peers < sessions) await new Promise((resolve) => setTimeout(resolve, 250));
      }
      peaks.push(peers);
      const released = Date.now();
      release();
      for (const outcome of await Promise.all(running)) record(ctx, outcome, [], errors);
      transfers.push(Date.now() - released);
    });
    ctx.check(peaks.every((peers) => peers === sessions), `tlsd holds all ${sessions} peers at once, every round`, `SIGUSR1 reported ${peaks.join(', ')} peers`);
    allIntact(ctx, rounds * sessions, errors);
    ctx.note(`${rounds} rounds of ${sessions} sessions at once (peak ${tracker.peak().children} children), ${mib(bytes)} MiB each way; all released at once, done in ${transfers.map((ms) => `${ms} ms`).join(', ')}`);
    noGrowth(ctx, tracker.before, afterRounds);
    await settle(ctx, tlsd, tracker, { rss: 'rounds' });
  },
};

/**
 * Runs the load `rounds` times; after each, waits for every session to end and the descriptors
 * to come back, and returns tlsd's usage then.
 */
async function inRounds(ctx: CaseContext, tlsd: SoakTlsd, rounds: number, perRound: number, round: () => Promise<void>): Promise<Usage[]> {
  const base = usage(tlsd.pid);
  const after: Usage[] = [];
  for (let i = 1; i <= rounds; i++) {
    await round();
    await eventually(() => countMatches(tlsd.stderr(), /: session ended/) >= 1 + i * perRound, 30_000);
    await eventually(() => {
      const now = usage(tlsd.pid);
      return now.children === 0 && now.fds <= base.fds + 2;
    }, 20_000);
    after.push(usage(tlsd.pid));
  }
  const ended = countMatches(tlsd.stderr(), /: session ended/);
  ctx.check(ended === 1 + rounds * perRound, `tlsd logs the end of every session (${1 + rounds * perRound})`, `${ended} "session ended" lines`);
  ctx.check(after.every((u) => u.fds <= base.fds + 2), `descriptors return to the baseline (${base.fds}) after every round`, after.map((u) => u.fds).join(', '));
  ctx.check(after.every((u) => u.zombies === 0 && u.children === 0), 'no child and no zombie after any round', after.map((u) => `${u.children} children, ${u.zombies} Z`).join('; '));
  return after;
}

/**
 * A leak grows with every round; memory that V8 and malloc keep after the first rounds, and use
 * again, levels off. So the last round may add only a little. The figures go in the notes.
 */
function noGrowth(ctx: CaseContext, before: Usage, after: Usage[]): void {
  const previous = after[after.length - 2]!.rssMiB;
  const last = after[after.length - 1]!.rssMiB;
  // Quick rounds are too short for the heap to settle: there a larger margin.
  const slack = Math.max(ctx.profile.pick(32, 16), previous * 0.05);
  ctx.note(`RSS after each round: ${after.map((u) => u.rssMiB).join(', ')} MiB (baseline ${before.rssMiB}): what V8 and malloc keep for reuse after the first round is not given back to the system`);
  ctx.check(last <= previous + slack, `RSS levels off (a leak would grow with every round): the last round adds ≤ ${Math.round(slack)} MiB`, `after each round: ${after.map((u) => u.rssMiB).join(', ')} MiB`);
}

/** One session before measuring: Node opens some descriptors (syslog socket, signal pipes) lazily. */
export async function warmUp(ctx: CaseContext, port: number, servername?: string, endAfterEcho = false): Promise<void> {
  const outcome = await echoSession(port, ctx.cast.alice, Buffer.from('warm-up\n'), { ...(servername ? { connect: { servername } } : {}), endAfterEcho });
  if (!outcome.ok) throw new Error(`the warm-up session failed: ${outcome.error ?? `${outcome.received} bytes back`}`);
  await new Promise((resolve) => setTimeout(resolve, 300));
}

function record(ctx: CaseContext, outcome: Outcome, times: number[], errors: string[]): void {
  tally(ctx, outcome);
  times.push(outcome.ms);
  if (!outcome.ok) errors.push(outcome.error ?? `${outcome.received} of ${outcome.sent} bytes back`);
}

/** One check for a batch of sessions: all intact, with the first few errors when not. */
export function allIntact(ctx: CaseContext, sessions: number, errors: string[]): void {
  ctx.check(errors.length === 0, `all ${sessions} sessions moved their payload intact`, `${errors.length} failed: ${errors.slice(0, 3).join('; ')}`);
}

/** Every session tlsd started is logged as ended (the slot and the child are gone). */
export async function sessionsEnded(ctx: CaseContext, log: () => string, expected: number, ms = 30_000): Promise<void> {
  const count = (): number => countMatches(log(), /: session ended/);
  await eventually(() => count() >= expected, ms);
  ctx.check(count() === expected, `tlsd logs the end of all ${expected} sessions`, `${count()} "session ended" lines`);
}

export function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}
