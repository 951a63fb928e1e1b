/** The table: medians over rounds, each figure beside its ratio to tlsd; and the issue's targets. */
import type { Figures, Value } from './measure.js';
import type { BenchOptions } from './options.js';
import type { ServerSpec } from './servers.js';
import type { StartupResult } from './startup.js';
import { median } from './stats.js';

interface Row {
  key: string;
  label: string;
  digits: number;
}

export function rows(options: BenchOptions): Row[] {
  const list: Row[] = [
    { key: 'rate', label: `rate: conn/s (${options.connections} conns, ${options.inFlight} in flight)`, digits: 0 },
    { key: 'rateP50', label: 'rate: p50 latency, ms', digits: 1 },
    { key: 'rateP99', label: 'rate: p99 latency, ms', digits: 1 },
    { key: 'latP50', label: 'latency, 1 in flight: p50, ms', digits: 2 },
    { key: 'latP99', label: 'latency, 1 in flight: p99, ms', digits: 2 },
    { key: 'cpuOwn', label: "CPU per conn, daemon's own, ms", digits: 2 },
    { key: 'cpuSystem', label: "CPU per conn, daemon's own: of it system time, ms", digits: 2 },
    { key: 'cpuPrimary', label: "CPU per conn, daemon's own: the main process (with --workers: the primary), ms", digits: 2 },
    { key: 'cpuWorkers', label: "CPU per conn, daemon's own: the workers, ms", digits: 2 },
    { key: 'cpuHelpers', label: "CPU per conn, daemon's own: the spawn helpers, ms", digits: 2 },
    { key: 'cpuTree', label: 'CPU per conn, with reaped children, ms', digits: 2 },
    { key: 'cpuGenerator', label: "CPU per conn, the load generator's, ms", digits: 2 },
    { key: 'bulk', label: `bulk echo ${options.bulkMiB} MiB through cat: MiB/s`, digits: 0 },
    { key: 'download', label: `download ${options.downloadMiB} MiB (cat FILE): MiB/s`, digits: 0 },
    { key: 'rateCold', label: 'just after start: rate, conn/s', digits: 0 },
    { key: 'cpuOwnCold', label: "just after start: CPU per conn, daemon's own, ms", digits: 2 },
    { key: 'bulkFirst', label: 'first transfer: bulk echo, MiB/s', digits: 0 },
    { key: 'downloadFirst', label: 'first transfer: download, MiB/s', digits: 0 },
  ];
  for (const level of options.idleLevels) list.push({ key: `idle${level}`, label: `idle: daemon RSS per peer at ${level}, KiB`, digits: 1 });
  list.push({ key: 'idleFresh', label: 'idle: the same at the last level, counted from before the warm-up, KiB', digits: 1 });
  list.push({ key: 'idleTree', label: 'idle: whole group PSS per peer, KiB', digits: 0 });
  list.push({ key: 'silent', label: `${options.silentCount} silent conns: change of others' p50, %`, digits: 1 });
  list.push({ key: 'protocol', label: 'protocol', digits: 0 });
  return list;
}

/** The median of the rounds' numbers (when at least half the rounds gave one), else the commonest note. */
export function combine(values: Value[]): Value {
  const numbers = values.filter((value) => value.n !== undefined && Number.isFinite(value.n)).map((value) => value.n!);
  const notes = values.map((value) => value.note).filter((note): note is string => note !== undefined);
  const commonest = notes.sort((a, b) => notes.filter((n) => n === b).length - notes.filter((n) => n === a).length)[0];
  if (numbers.length > 0 && numbers.length * 2 >= values.length) {
    const partial = numbers.length < values.length ? `${numbers.length}/${values.length} rounds` : undefined;
    return { n: median(numbers), note: [commonest, partial].filter(Boolean).join('; ') || undefined };
  }
  return { note: commonest ?? 'n/a' };
}

export type Results = Map<string, Figures[]>;

function format(value: Value | undefined, digits: number): string {
  if (!value) return '–';
  const number = value.n === undefined ? '' : value.n.toFixed(digits);
  if (value.note && number) return `${number} (${value.note})`;
  return number || value.note || '–';
}

function cell(row: Row, value: Value | undefined, base: Value | undefined, isBase: boolean): string {
  const text = format(value, row.digits);
  if (isBase || value?.n === undefined || base?.n === undefined || row.key === 'silent' || base.n === 0) return text;
  return `${text} ${ratio(value.n, base.n)}`;
}

function ratio(value: number, base: number): string {
  return `×${(value / base).toFixed(2)}`;
}

export function combined(results: Results, specs: ServerSpec[], options: BenchOptions): Map<string, Map<string, Value>> {
  const table = new Map<string, Map<string, Value>>();
  for (const spec of specs) {
    const rounds = results.get(spec.name) ?? [];
    const values = new Map<string, Value>();
    for (const row of rows(options)) {
      const perRound = rounds.map((figures) => figures[row.key]).filter((value): value is Value => value !== undefined);
      if (perRound.length > 0) values.set(row.key, combine(perRound));
    }
    table.set(spec.name, values);
  }
  return table;
}

function markdownTable(header: string[], body: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...body.map((line) => (line[column] ?? '').length)));
  const line = (cells: string[]): string => `| ${cells.map((text, column) => text.padEnd(widths[column]!)).join(' | ')} |`;
  return [line(header), `| ${widths.map((width) => '-'.repeat(width)).join(' | ')} |`, ...body.map(line)].join('\n');
}

export function resultsTable(results: Results, specs: ServerSpec[], options: BenchOptions): string {
  const table = combined(results, specs, options);
  const base = table.get('tlsd');
  const header = ['', ...specs.map((spec) => (spec.name === 'tlsd' ? 'tlsd' : `${spec.name} (×tlsd)`))];
  const body: string[][] = [];
  for (const row of rows(options)) {
    if (specs.every((spec) => !table.get(spec.name)?.has(row.key))) continue;
    body.push([row.label, ...specs.map((spec) => cell(row, table.get(spec.name)?.get(row.key), base?.get(row.key), spec.name === 'tlsd'))]);
  }
  return markdownTable(header, body);
}

export function startupTable(startup: StartupResult[]): string {
  return markdownTable(
    ['program (whole process)', 'median, ms', 'min, ms', 'command'],
    startup.map((result) => [result.name, result.error ?? result.medianMs!.toFixed(0), result.minMs?.toFixed(0) ?? '', `\`${result.command}\``]),
  );
}

export interface TargetCheck {
  target: string;
  measured: string;
  met: boolean | undefined;
}

export function checkTargets(results: Results, specs: ServerSpec[], options: BenchOptions, startup: StartupResult[]): TargetCheck[] {
  const table = combined(results, specs, options);
  const get = (server: string, key: string): number | undefined => table.get(server)?.get(key)?.n;
  const checks: TargetCheck[] = [];
  const tlsdRate = get('tlsd', 'rate');
  const stunnelRate = get('stunnel', 'rate');
  const cpu = get('tlsd', 'cpuOwn');
  /** The same comparison just after start (or on the first transfer), where the target is checked on the steady figures. */
  const earlier = (key: string, peer: string, when = 'just after start'): string => {
    const ours = get('tlsd', key);
    const theirs = get(peer, key);
    return ours && theirs ? `; ${when} ${ours.toFixed(0)} vs ${theirs.toFixed(0)}: ${(ours / theirs).toFixed(2)}×` : '';
  };
  checks.push({
    target: "rate ≥ 1.8× stunnel's conn/s",
    measured: tlsdRate && stunnelRate ? `${tlsdRate.toFixed(0)} vs ${stunnelRate.toFixed(0)} conn/s: ${(tlsdRate / stunnelRate).toFixed(2)}×${earlier('rateCold', 'stunnel')}` : 'not measured',
    met: tlsdRate && stunnelRate ? tlsdRate >= 1.8 * stunnelRate : undefined,
  });
  const cpuCold = get('tlsd', 'cpuOwnCold');
  checks.push({
    target: "tlsd's own CPU per connection ≤ 1.0 ms",
    measured: cpu !== undefined ? `${cpu.toFixed(2)} ms${cpuCold === undefined ? '' : `; just after start ${cpuCold.toFixed(2)}`}` : 'not measured',
    met: cpu !== undefined ? cpu <= 1.0 : undefined,
  });
  const lat = get('tlsd', 'latP50');
  const stunnelLat = get('stunnel', 'latP50');
  checks.push({
    target: "1-in-flight p50 latency ≤ stunnel's",
    measured: lat && stunnelLat ? `${lat.toFixed(2)} vs ${stunnelLat.toFixed(2)} ms: ${(lat / stunnelLat).toFixed(2)}×` : 'not measured',
    met: lat && stunnelLat ? lat <= stunnelLat : undefined,
  });
  const bulk = get('tlsd', 'bulk');
  const bestPeer = Math.max(get('stunnel', 'bulk') ?? 0, get('socat', 'bulk') ?? 0);
  checks.push({
    target: 'bulk echo ≥ 1.2× the better of stunnel and socat, every byte checked',
    measured: bulk !== undefined && bestPeer > 0 ? `${bulk.toFixed(0)} vs ${bestPeer.toFixed(0)} MiB/s: ${(bulk / bestPeer).toFixed(2)}×${earlier('bulkFirst', (get('stunnel', 'bulkFirst') ?? 0) >= (get('socat', 'bulkFirst') ?? 0) ? 'stunnel' : 'socat', 'first transfer')}` : `tlsd: ${table.get('tlsd')?.get('bulk')?.note ?? 'not measured'}`,
    met: bulk !== undefined && bestPeer > 0 ? bulk >= 1.2 * bestPeer : bulk === undefined && table.get('tlsd')?.has('bulk') ? false : undefined,
  });
  const download = get('tlsd', 'download');
  const stunnelDownload = get('stunnel', 'download');
  checks.push({
    target: "download ≥ stunnel's",
    measured: download && stunnelDownload ? `${download.toFixed(0)} vs ${stunnelDownload.toFixed(0)} MiB/s: ${(download / stunnelDownload).toFixed(2)}×${earlier('downloadFirst', 'stunnel', 'first transfer')}` : 'not measured',
    met: download && stunnelDownload ? download >= stunnelDownload : undefined,
  });
  checks.push(idleCheck(table, 'tlsd', options));
  if (table.has('tlsd-w2')) {
    const own = get('tlsd', 'cpuOwn');
    const workers = get('tlsd-w2', 'cpuOwn');
    const ownCold = get('tlsd', 'cpuOwnCold');
    const workersCold = get('tlsd-w2', 'cpuOwnCold');
    const us = (ms: number): string => `${(ms * 1000).toFixed(0)} µs`;
    checks.push({
      target: "tlsd-w2 (--workers 2): CPU per connection, summed over its processes, ≤ 1.05× tlsd's",
      measured:
        own && workers
          ? `${us(workers)} vs ${us(own)}: ${(workers / own).toFixed(2)}×${ownCold && workersCold ? `; just after start ${us(workersCold)} vs ${us(ownCold)}: ${(workersCold / ownCold).toFixed(2)}×` : ''}`
          : 'not measured',
      met: own && workers ? workers <= 1.05 * own : undefined,
    });
    checks.push(idleCheck(table, 'tlsd-w2', options));
  }
  const silent = table.get('tlsd')?.get('silent');
  checks.push({
    target: `${options.silentCount} silent connections change the others' p50 by < 10%`,
    measured: silent ? `${format(silent, 1)}%` : 'not measured',
    met: silent ? silent.n !== undefined && Math.abs(silent.n) < 10 : undefined,
  });
  for (const name of ['fp2alias', 'std2fifo', 'std2fifo, stdin a pipe']) {
    const result = startup.find((entry) => entry.name === name);
    checks.push({
      target: `${name} starts and finishes a trivial run in < 60 ms`,
      measured: result ? (result.error ?? `${result.medianMs!.toFixed(0)} ms (median)`) : 'not measured',
      met: result?.medianMs !== undefined ? result.medianMs < 60 : undefined,
    });
  }
  return checks;
}

/** The issue's idle target for one of the tlsd servers: 10,000 peers held at ≤ 48 KiB of daemon RSS each. */
function idleCheck(table: Map<string, Map<string, Value>>, server: string, options: BenchOptions): TargetCheck {
  const top = options.idleLevels[options.idleLevels.length - 1]!;
  const figures = table.get(server);
  const idle = figures?.get(`idle${top}`);
  const fresh = figures?.get('idleFresh');
  const lastHeld = [...options.idleLevels].reverse().map((level) => figures?.get(`idle${level}`)).find((value) => value !== undefined);
  // The issue asks for 10,000; a run with fewer levels (descriptor limits) reports at its top one, but cannot meet it.
  const asked = 10_000;
  const who = server === 'tlsd' ? 'idle' : `${server}, idle`;
  return {
    target: top >= asked ? `${who}: ${top} peers held, ≤ 48 KiB daemon RSS per peer` : `${who}: ${asked} peers held (this run: ${top}), ≤ 48 KiB daemon RSS per peer`,
    measured: `${idle ? `${format(idle, 1)} KiB per peer` : lastHeld ? `${format(lastHeld, 1)} KiB per peer, fewer than ${top} held` : 'not measured'}${fresh?.n === undefined ? '' : `; counted from before the warm-up ${fresh.n.toFixed(1)}`}`,
    met: idle?.n !== undefined ? top >= asked && idle.note === undefined && idle.n <= 48 : lastHeld ? false : undefined,
  };
}

export function targetsTable(checks: TargetCheck[]): string {
  return markdownTable(
    ['target (issue "Performance")', 'measured', 'met'],
    checks.map((check) => [check.target, check.measured, check.met === undefined ? 'not measured' : check.met ? 'yes' : '**no**']),
  );
}
