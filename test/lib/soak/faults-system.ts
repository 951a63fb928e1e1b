import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { countMatches } from '../limits-faults.js';
import type { CaseContext, SoakCase } from './case.js';
import { eventually, extraDescriptors, settle, startSoakTlsd, track, usage } from './daemon.js';
import { warmUp } from './load.js';
import { SyslogSocket } from './syslog.js';
import { describeLatency, echoSession, latency, Rng, tally, type Outcome } from './traffic.js';

/** Plain TCP connections that send nothing: each costs tlsd a descriptor until its handshake times out. */
async function idleConnections(port: number, count: number): Promise<Socket[]> {
  return Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<Socket>((resolve) => {
          const socket = netConnect({ host: '127.0.0.1', port });
          socket.on('error', () => {});
          socket.once('connect', () => resolve(socket));
          socket.once('close', () => resolve(socket));
        }),
    ),
  );
}

export const descriptorExhaustion: SoakCase = {
  id: 'fd-exhaustion',
  title: 'descriptors exhausted under a low ulimit -n, again and again, with real sessions',
  // Node's own spawn leaks the socket pairs of a spawn that fails with EMFILE (its stdio is made
  // before the exec-error pipe fails); through the spawn helper tlsd never spawns itself.
  short: true,
  async run(ctx) {
    const limit = ctx.profile.pick(64, 128);
    const cycles = ctx.profile.pick(2, 5);
    const rng = new Rng(31);
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: ['cat'], nofile: limit, options: ['--handshake-timeout', '3'] });
    await warmUp(ctx, tlsd.port);
    const tracker = track(tlsd.pid);
    const base = usage(tlsd.pid);
    let served = 0;
    let refused = 0;
    const partial: string[] = [];
    const recoveries: number[] = [];
    const notBack: string[] = [];
    for (let cycle = 1; cycle <= cycles; cycle++) {
      // Nearly out: idle connections leave room for a few sessions; twenty-four try at once.
      // Then out: more idle connections than the limit, and the same again.
      const idle: Socket[] = [];
      for (const room of [12, -16]) {
        idle.push(...(await idleConnections(tlsd.port, Math.max(0, limit - base.fds - room - idle.length))));
        const sessions = await Promise.all(Array.from({ length: 24 }, () => echoSession(tlsd.port, ctx.cast.alice, rng.bytes(rng.int(1, 65_536)), { ms: 30_000 })));
        for (const outcome of sessions) {
          tally(ctx, outcome, { refusalIsFailure: false });
          if (outcome.ok) served++;
          else if (outcome.refused) refused++;
          else partial.push(outcome.error ?? `${outcome.received} of ${outcome.sent} bytes back`);
        }
      }
      ctx.check(tlsd.running(), `cycle ${cycle}: tlsd stays up while out of descriptors`);
      for (const socket of idle) socket.destroy();
      // Recover: a client is served again once the idle connections are gone.
      const started = Date.now();
      let back: Outcome | undefined;
      while (Date.now() - started < 20_000) {
        back = await echoSession(tlsd.port, ctx.cast.bob, Buffer.from(`back ${cycle}\n`), { ms: 10_000 });
        if (back.ok) break;
        await sleep(250);
      }
      if (back?.ok) recoveries.push(Date.now() - started);
      else notBack.push(`cycle ${cycle}: ${back?.error ?? 'no reply'}`);
      const afterCycle = (): boolean => usage(tlsd.pid).fds <= base.fds + 2 && usage(tlsd.pid).children === 0;
      await eventually(afterCycle, ctx.profile.pick(5_000, 15_000));
      ctx.check(afterCycle(), `cycle ${cycle}: descriptors back to the baseline (${base.fds})`, `${usage(tlsd.pid).fds} open (${extraDescriptors(tlsd.pid, tracker.beforeKinds)}), ${countMatches(tlsd.stderr(), /: Failed to execute /)} children that could not start so far`);
    }
    ctx.check(notBack.length === 0, 'after each exhaustion a client is served again', notBack.join('; '));
    ctx.check(partial.length === 0, 'a session is either refused whole or served whole, never cut short', partial.slice(0, 3).join('; '));
    const after: Outcome[] = [];
    for (let i = 0; i < 20; i++) after.push(await echoSession(tlsd.port, ctx.cast.bob, rng.bytes(rng.int(1, 65_536))));
    for (const outcome of after) tally(ctx, outcome);
    ctx.check(after.every((o) => o.ok), 'and then 20 sessions in a row all work', after.filter((o) => !o.ok).map((o) => o.error).slice(0, 3).join('; '));
    const log = tlsd.stderr();
    ctx.check(/out of file descriptors|EMFILE/i.test(log), 'tlsd says it ran out of descriptors');
    ctx.note(`${cycles} cycles with ulimit -n ${limit}, nearly out then out of descriptors: ${served} sessions served intact, ${refused} refused, ${partial.length} cut short; recovered in ${recoveries.map((ms) => `${ms} ms`).join(', ')}; ${countMatches(log, /out of file descriptors/)} refusals logged as "out of file descriptors", ${countMatches(log, /EMFILE/)} lines name EMFILE`);
    await settle(ctx, tlsd, tracker);
  },
};

/** Mounts a tmpfs (root only); returns whether it worked. */
function mountTmpfs(ctx: CaseContext, dir: string, options: string): boolean {
  mkdirSync(dir, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tlsd-soak', dir], { stdio: 'ignore' });
  } catch {
    return false;
  }
  ctx.teardown(() => void execFileSync('umount', ['-l', dir], { stdio: 'ignore' }));
  return true;
}

export const certDirProblems: SoakCase = {
  id: 'cert-dir-read-only-full',
  title: '-d into a read-only directory and into a full one',
  short: true,
  async run(ctx) {
    const sessions = ctx.profile.pick(20, 200);
    const rng = new Rng(32);
    const peers = [ctx.cast.alice, ctx.cast.bob];

    // Read-only: a read-only tmpfs as root (root writes through modes), mode 0555 otherwise.
    const readOnly = join(ctx.dir, 'ro');
    if (!mountTmpfs(ctx, readOnly, 'ro,size=64k')) chmodSync(readOnly, 0o555);
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: ['cat'], options: ['-d', readOnly] });
    await warmUp(ctx, tlsd.port);
    const tracker = track(tlsd.pid);
    const outcomes: Outcome[] = [];
    for (let i = 0; i < sessions; i++) outcomes.push(await echoSession(tlsd.port, peers[i % 2], rng.bytes(rng.int(1, 16_384))));
    for (const outcome of outcomes) tally(ctx, outcome);
    ctx.check(outcomes.every((o) => o.ok), `read-only: all ${sessions} sessions are served all the same`);
    ctx.check(/cannot save the certificate in .*: .*(EROFS|EACCES|read-only|permission)/i.test(tlsd.stderr()), 'read-only: tlsd says why it cannot save the certificate', tlsd.stderr().split('\n').find((l) => /certificate in/.test(l)) ?? 'no such line');
    ctx.check(readdirSync(readOnly).length === 0, 'read-only: nothing written');
    await settle(ctx, tlsd, tracker);

    // Full: a tmpfs filled to the last block. No partial certificate file may be left behind,
    // since tlsd keeps an existing file as it is (the name is the content's hash).
    const full = join(ctx.dir, 'full');
    if (!mountTmpfs(ctx, full, 'size=16k')) {
      ctx.note('full directory not tried: mounting a tmpfs needs root');
      return;
    }
    try {
      execFileSync('dd', ['if=/dev/zero', `of=${join(full, 'filler')}`, 'bs=4k'], { stdio: 'ignore' });
    } catch {
      // "No space left on device": full, as wanted
    }
    const daemon = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: ['cat'], options: ['-d', full] });
    const first = await echoSession(daemon.port, ctx.cast.alice, Buffer.from('full disk\n'));
    tally(ctx, first);
    ctx.check(first.ok, 'full: the session is served all the same');
    await eventually(() => /cannot save the certificate/.test(daemon.stderr()), 5_000);
    ctx.check(/cannot save the certificate in .*: .*(ENOSPC|no space)/i.test(daemon.stderr()), 'full: tlsd says the disk is full', daemon.stderr().split('\n').find((l) => /certificate in/.test(l)) ?? 'no such line');
    const der = execFileSync('openssl', ['x509', '-in', ctx.cast.alice.cert, '-outform', 'DER']);
    const saved = join(full, ctx.cast.alice.fingerprint);
    const leftover = readdirSync(full).filter((name) => name !== 'filler');
    ctx.check(leftover.length === 0, 'full: no partial certificate file is left behind', leftover.map((name) => `${name} (${statSync(join(full, name)).size} of ${der.length} bytes)`).join(', '));
    rmSync(join(full, 'filler'));
    const again = await echoSession(daemon.port, ctx.cast.alice, Buffer.from('space again\n'));
    tally(ctx, again);
    await sleep(300);
    let content: Buffer | undefined;
    try {
      content = readFileSync(saved);
    } catch {
      content = undefined;
    }
    ctx.check(content !== undefined && content.equals(der), 'full: once there is space, the next session of that peer saves its whole certificate', content === undefined ? 'no file' : `${content.length} of ${der.length} bytes`);
  },
};

export const syslogProblems: SoakCase = {
  id: 'syslog-absent-or-stuck',
  title: 'syslog socket missing, or there and never read (no -e): messages reach stderr, sessions unaffected',
  async run(ctx) {
    const sessions = ctx.profile.pick(40, 400);
    const rng = new Rng(33);
    for (const kind of ['missing', 'not reading'] as const) {
      const path = join(ctx.dir, `log-${kind === 'missing' ? 'missing' : 'stuck'}`);
      const sink = kind === 'not reading' ? new SyslogSocket(path) : undefined;
      if (sink) ctx.teardown(() => sink.close());
      const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: ['cat'], stderr: false, env: { TLSD_SYSLOG_SOCKET: path }, listening: false });
      // The Listening line goes where tlsd's messages go: stderr when the socket is missing, the
      // socket otherwise (read this once; then never again).
      const listening = /Listening on \S+, port (\d+)/;
      const where = (): string => (sink ? (sink.drain(), sink.records.join('\n')) : tlsd.stderr());
      await eventually(() => listening.test(where()), 15_000);
      const port = listening.exec(where())?.[1];
      if (!ctx.check(port !== undefined, `${kind}: tlsd starts and says where it listens (${sink ? 'in the socket' : 'on stderr, without -e'})`, tlsd.stderr().slice(0, 500))) continue;
      tlsd.port = Number(port);
      await warmUp(ctx, tlsd.port);
      const tracker = ctx.fds === undefined ? track(tlsd.pid) : undefined;
      const outcomes: Outcome[] = [];
      for (let i = 0; i < sessions; i++) outcomes.push(await echoSession(tlsd.port, ctx.cast.alice, rng.bytes(rng.int(1, 16_384))));
      for (const outcome of outcomes) tally(ctx, outcome);
      ctx.check(outcomes.every((o) => o.ok), `${kind}: all ${sessions} sessions are served`);
      const times = latency(outcomes.map((o) => o.ms));
      ctx.check(times.p95 < 500, `${kind}: no session waits for the log (p95 < 500 ms)`, describeLatency(times));
      if (sink) await sleep(1_000);
      else await eventually(() => countMatches(tlsd.stderr(), /: session ended/) >= sessions + 1, 10_000);
      const ended = countMatches(tlsd.stderr(), /: session ended/);
      if (kind === 'missing') {
        ctx.check(ended === sessions + 1, 'missing: every message reaches stderr instead', `${ended} "session ended" lines of ${sessions + 1}`);
      } else {
        const queued = sink!.drain();
        const records = sink!.records;
        ctx.check(ended + countMatches(records.join('\n'), /: session ended/) >= sessions + 1, 'not reading: every message reaches the socket or, once it is full, stderr', `${ended} on stderr, ${queued} queued in the socket`);
        ctx.check(records.length > 0 && records.every((r) => /^<\d+>\w{3} [ \d]\d \d\d:\d\d:\d\d tlsd\[\d+\]: /.test(r)), 'not reading: what the socket took are syslog records', records[0]);
        ctx.note(`not reading: the socket took ${records.length} records before it was full; ${ended} "session ended" lines came on stderr; ${describeLatency(times)}`);
      }
      if (tracker) await settle(ctx, tlsd, tracker);
    }
  },
};
