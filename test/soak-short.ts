import { rmSync } from 'node:fs';
import t from 'tap';
import { tempDir } from './lib/identity.js';
import { makeCast, profile, runCase, type CaseResult, type SoakCase } from './lib/soak/case.js';
import { suite } from './lib/soak/suite.js';

// The reliability suite's most telling cases in its quick profile (`npm run soak -- --quick`
// runs all of them; `npm run soak` the full sizes). Each check of a case is one assertion here.
const chosen = suite.filter((c) => c.short);
const ids = tempDir('tlsd-soak-short-');
t.teardown(() => rmSync(ids, { recursive: true, force: true }));
const cast = makeCast(ids);
const quick = profile('quick');
// A quick case takes seconds; one that hangs is abandoned (and reported) well before tap's own
// timeout for the file would cut everything short.
const caseLimitMs = 90_000;

// Slowloris compares latencies, so it runs alone first; the others (each its own tlsd) share the
// machine four at a time, so that the file stays within a minute. The cases run ahead of the
// subtests below, which only report them: a subtest's time is its wait, the case's own is a comment.
const alone = new Set(['hostile-slowloris']);
// The slowest (the more so while they find something wrong) start first, so that the lanes end together.
const slowest = ['hostile-oversized-records', 'fd-exhaustion', 'load-sequential'];
const order = (c: SoakCase): number => (slowest.includes(c.id) ? slowest.indexOf(c.id) : slowest.length);
const done = new Map<string, (result: CaseResult) => void>();
const results = new Map<string, Promise<CaseResult>>(chosen.map((c) => [c.id, new Promise<CaseResult>((resolve) => done.set(c.id, resolve))]));
const run = async (c: SoakCase): Promise<void> => done.get(c.id)!(await runCase(c, quick, cast, caseLimitMs));
void (async () => {
  for (const c of chosen.filter((c) => alone.has(c.id))) await run(c);
  const rest = chosen.filter((c) => !alone.has(c.id)).sort((a, b) => order(a) - order(b));
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < rest.length) await run(rest[next++]!);
  };
  await Promise.all(Array.from({ length: 4 }, lane));
})();

for (const c of chosen) {
  t.test(`${c.id}: ${c.title}`, async (t) => {
    const result = await results.get(c.id)!;
    t.comment(`the case ran ${(result.ms / 1000).toFixed(1)} s`);
    for (const check of result.checks) t.ok(check.ok, check.what, check.detail === undefined ? {} : { detail: check.detail });
    t.equal(result.sessionFailures, 0, `every session went as it should (${result.tries} tried)`);
    t.equal(result.bytesLost, 0, 'no byte lost');
    for (const note of result.notes) t.comment(note);
  });
}
