/**
 * `npm run soak [-- --quick] [-- --only ID,ID] [-- --markdown FILE]`: runs the reliability suite
 * against the real bin/tlsd on loopback and prints a table; exits 1 when anything failed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, release, totalmem } from 'node:os';
import { tempDir } from '../identity.js';
import { makeCast, profile, runCase, type CaseResult } from './case.js';
import { suite } from './suite.js';
import { details, markdownTable, textTable } from './table.js';

const args = process.argv.slice(2);
const option = (name: string): string | undefined => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};
if (args.includes('-h') || args.includes('--help')) {
  console.log('usage: npm run soak -- [--quick] [--only ID[,ID…]] [--markdown FILE]\ncases:');
  for (const c of suite) console.log(`  ${c.id.padEnd(26)} ${c.title}`);
  process.exit(0);
}
const prof = profile(args.includes('--quick') ? 'quick' : 'full');
const only = option('--only')?.split(',');
const unknown = only?.filter((id) => !suite.some((c) => c.id === id)) ?? [];
if (unknown.length > 0) {
  console.error(`soak: no such case: ${unknown.join(', ')} (see --help)`);
  process.exit(2);
}
const selected = suite.filter((c) => !only || only.includes(c.id));

const ids = tempDir('tlsd-soak-ids-');
const cast = makeCast(ids);
const results: CaseResult[] = [];
const started = new Date();
// Other work on the machine skews latencies and deadlines: the load when the run began says how much.
const load = loadavg().map((l) => l.toFixed(2)).join(' ');
console.log(`tlsd reliability suite, ${prof.name} profile, ${selected.length} cases, ${machine()}, load average ${load}`);
for (const soakCase of selected) {
  process.stdout.write(`${soakCase.id} … `);
  const result = await runCase(soakCase, prof, cast);
  results.push(result);
  console.log(`${result.failures === 0 ? 'ok' : `${result.failures} failure(s)`} (${(result.ms / 1000).toFixed(1)} s)`);
}
rmSync(ids, { recursive: true, force: true });

console.log(`\n${textTable(results)}\n\n${details(results)}`);
const failed = results.filter((r) => r.failures > 0 || r.bytesLost > 0);
const seconds = Math.round((Date.now() - started.getTime()) / 1000);
console.log(`\n${results.length - failed.length} of ${results.length} cases ok, ${seconds} s`);

const markdown = option('--markdown');
if (markdown) {
  const header = `Run ${started.toISOString().replace(/\.\d+Z$/, 'Z')}, ${prof.name} profile, ${seconds} s, on ${machine()}; load average ${load} at the start, ${loadavg().map((l) => l.toFixed(2)).join(' ')} at the end.`;
  const table = `${header}\n\n${markdownTable(results)}\n\n${details(results, true)}\n`;
  // A file with the markers (docs/reliability.md) gets the table between them; any other is replaced.
  const [begin, end] = ['<!-- soak:begin -->', '<!-- soak:end -->'];
  const old = existsSync(markdown) ? readFileSync(markdown, 'utf8') : '';
  const at = old.indexOf(begin);
  const until = old.indexOf(end);
  writeFileSync(markdown, at >= 0 && until > at ? `${old.slice(0, at + begin.length)}\n${table}${old.slice(until)}` : table);
  console.log(`table written to ${markdown}`);
}
process.exit(failed.length === 0 ? 0 : 1);

/** What the figures were measured on. */
function machine(): string {
  const cpu = cpus();
  const openssl = (() => {
    try {
      return execFileSync('openssl', ['version'], { encoding: 'utf8' }).trim().split(' ').slice(0, 2).join(' ');
    } catch {
      return 'openssl ?';
    }
  })();
  return `${hostname()}: ${cpu.length} × ${cpu[0]?.model.trim() ?? 'CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}, Node ${process.version} (OpenSSL ${process.versions.openssl}), client ${openssl}`;
}
