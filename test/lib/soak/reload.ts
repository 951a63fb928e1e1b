import { execFileSync } from 'node:child_process';
import { copyFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { opensslFingerprint } from '../identity.js';
import { countMatches } from '../limits-faults.js';
import type { SoakCase } from './case.js';
import { eventually, settle, startSoakTlsd, track } from './daemon.js';
import { warmUp } from './load.js';
import { describeLatency, echoSession, latency, Rng, tally, type Outcome } from './traffic.js';

interface Phase {
  name: string;
  /** What goes into the certificate file. */
  contents: string;
  /** The fingerprint new sessions must see once the phase is confirmed. */
  expect: string;
  good: boolean;
}

interface Timed extends Outcome {
  startedAt: number;
}

/**
 * SIGHUP every 100 ms while sessions run; the certificate file is replaced now and then by
 * another certificate of the same key, by garbage, or by a certificate of another key. No session
 * fails; once a good reload is logged new sessions see the new certificate; a broken one keeps
 * the old certificate in service.
 */
export const reloadUnderLoad: SoakCase = {
  id: 'reload-under-load',
  title: 'SIGHUP every 100 ms under load; certificate swapped, broken, mismatched',
  short: true,
  timeoutMs: 300_000,
  async run(ctx) {
    const seconds = ctx.profile.pick(4, 60);
    const workers = ctx.profile.pick(4, 8);
    const key = join(ctx.dir, 'key.pem');
    const live = join(ctx.dir, 'cert.pem');
    const certA = join(ctx.dir, 'a.pem');
    const certB = join(ctx.dir, 'b.pem');
    execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key], { stdio: 'ignore' });
    for (const [file, name] of [[certA, 'reload-a'], [certB, 'reload-b']] as const) {
      execFileSync('openssl', ['req', '-x509', '-key', key, '-out', file, '-days', '30', '-subj', `/CN=${name}`], { stdio: 'ignore' });
    }
    const fpA = opensslFingerprint(certA);
    const fpB = opensslFingerprint(certB);
    const read = (file: string): string => execFileSync('cat', [file], { encoding: 'utf8' });
    const garbage = '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n';
    const cycle: Phase[] = [
      { name: 'certificate B', contents: read(certB), expect: fpB, good: true },
      { name: 'garbage', contents: garbage, expect: fpB, good: false },
      { name: 'certificate A', contents: read(certA), expect: fpA, good: true },
      { name: 'certificate of another key', contents: read(ctx.cast.bob.cert), expect: fpA, good: false },
    ];
    copyFileSync(certA, live);
    const tlsd = await startSoakTlsd(ctx, { command: ['cat'], options: ['-k', key, '-c', live] });
    await warmUp(ctx, tlsd.port);
    const tracker = track(tlsd.pid);

    const outcomes: Timed[] = [];
    let stopping = false;
    const rng = new Rng(3);
    const worker = async (): Promise<void> => {
      while (!stopping) {
        const startedAt = Date.now();
        outcomes.push({ ...(await echoSession(tlsd.port, ctx.cast.alice, rng.bytes(rng.int(1, 16_384)), { ms: 30_000 })), startedAt });
      }
    };
    const running = Promise.all(Array.from({ length: workers }, worker));
    const hup = setInterval(() => tlsd.signal('SIGHUP'), 100);
    const reloaded = /Reloaded key and certificate, SHA256 [0-9a-f]{64}/g;
    const failed = /Failed to load key or certificate: /g;

    // Each phase: swap the file, wait for two reloads of that kind (the second surely read the new
    // file), then the sessions that start before the next swap must see the expected certificate.
    const windows: Array<{ phase: Phase; from: number; to: number }> = [];
    const phaseMs = ctx.profile.pick(1200, 2500);
    const end = Date.now() + seconds * 1000;
    let unconfirmed = 0;
    for (let i = 0; Date.now() < end; i++) {
      const phase = cycle[i % cycle.length]!;
      const pattern = phase.good ? reloaded : failed;
      const seen = countMatches(tlsd.stderr(), pattern);
      writeFileSync(`${live}.tmp`, phase.contents);
      renameSync(`${live}.tmp`, live);
      const phaseEnd = Date.now() + phaseMs;
      if (!(await eventually(() => countMatches(tlsd.stderr(), pattern) >= seen + 2, 10_000))) {
        unconfirmed++;
        continue;
      }
      const from = Date.now();
      await sleep(Math.max(0, phaseEnd - Date.now()));
      windows.push({ phase, from, to: Date.now() });
    }
    clearInterval(hup);
    stopping = true;
    await running;

    const errors: string[] = [];
    for (const outcome of outcomes) {
      tally(ctx, outcome);
      if (!outcome.ok) errors.push(outcome.error ?? `${outcome.received} of ${outcome.sent} bytes back`);
    }
    ctx.check(errors.length === 0, `none of the ${outcomes.length} sessions fails while tlsd reloads`, `${errors.length} failed: ${errors.slice(0, 3).join('; ')}`);
    ctx.check(unconfirmed === 0, 'every swap is followed by the reloads it should cause', `${unconfirmed} swaps without two matching log lines within 10 s`);
    const wrong: string[] = [];
    let judged = 0;
    for (const { phase, from, to } of windows) {
      for (const outcome of outcomes.filter((o) => o.ok && o.startedAt >= from && o.startedAt < to)) {
        judged++;
        if (outcome.serverFingerprint !== phase.expect) wrong.push(`${phase.name}: saw ${outcome.serverFingerprint?.slice(0, 12)}…, expected ${phase.expect.slice(0, 12)}…`);
      }
    }
    const goodJudged = windows.filter((w) => w.phase.good).length;
    ctx.check(wrong.length === 0 && judged > 0, 'new sessions see the new certificate after a good reload, the old one after a broken reload', `${wrong.length} of ${judged} sessions saw another certificate: ${wrong.slice(0, 3).join('; ')}`);
    const log = tlsd.stderr();
    ctx.note(`${countMatches(log, reloaded)} reloads logged as done, ${countMatches(log, failed)} as failed (old certificate kept); ${windows.length} phases (${goodJudged} good); ${judged} sessions checked for their certificate; ${describeLatency(latency(outcomes.map((o) => o.ms)))}`);
    ctx.check(/Failed to load key or certificate: .*(certificate|PEM|key)/i.test(log), 'a failed reload says why');
    await settle(ctx, tlsd, tracker);
  },
};
