import type { CaseResult, Triple } from './case.js';

const triple = (t: Triple | undefined): string => (t ? `${t.before} / ${t.during} / ${t.after}` : '-');

/** The row's verdict: ok, or the first check that failed. */
function verdict(result: CaseResult): string {
  const failed = result.checks.filter((check) => !check.ok);
  if (failed.length === 0 && result.failures === 0) return 'ok';
  return `FAIL: ${failed.map((check) => check.what).join('; ') || `${result.failures} session(s) failed`}`;
}

const headers = ['case', 'tried', 'failures', 'bytes lost', 'fds before/peak/after', 'RSS MiB before/peak/after', 'result'];

function cells(result: CaseResult): string[] {
  return [result.id, String(result.tries), String(result.failures), String(result.bytesLost), triple(result.fds), triple(result.rssMiB), verdict(result)];
}

/** A plain-text table for the terminal. */
export function textTable(results: CaseResult[]): string {
  const rows = [headers, ...results.map(cells)];
  const widths = headers.map((_, column) => Math.max(...rows.map((row) => (column === 6 ? Math.min(row[column]!.length, 60) : row[column]!.length))));
  const line = (row: string[]): string =>
    row
      .map((cell, column) => (column === 6 ? cell : column >= 1 && column <= 3 ? cell.padStart(widths[column]!) : cell.padEnd(widths[column]!)))
      .join('  ');
  return [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}

const escape = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** The same table in Markdown, for docs/reliability.md. */
export function markdownTable(results: CaseResult[]): string {
  const rows = results.map(cells);
  return [`| ${headers.join(' | ')} |`, `| ${headers.map((_, i) => (i >= 1 && i <= 3 ? '---:' : '---')).join(' | ')} |`, ...rows.map((row) => `| ${row.map(escape).join(' | ')} |`)].join('\n');
}

/** What each case did and saw, and every failed check with its details. */
export function details(results: CaseResult[], markdown = false): string {
  const out: string[] = [];
  for (const result of results) {
    out.push(markdown ? `- **${result.id}** (${(result.ms / 1000).toFixed(1)} s): ${escape(result.title)}.` : `${result.id} (${(result.ms / 1000).toFixed(1)} s): ${result.title}`);
    for (const note of result.notes) out.push(markdown ? `  - ${escape(note)}` : `    ${note}`);
    for (const check of result.checks.filter((c) => !c.ok)) {
      const text = `FAILED: ${check.what}${check.detail ? ` — ${check.detail}` : ''}`;
      out.push(markdown ? `  - ${escape(text.slice(0, 1500))}` : `    ${text}`);
    }
  }
  return out.join('\n');
}
