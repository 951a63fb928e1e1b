/**
 * One round for one server: the loads against fresh instances of it, read from the client's side
 * (rates, latencies, checked streams) and from /proc (the daemon's own CPU time and memory).
 */
import { Generator } from './generator.js';
import type { RateResult, StreamResult } from './loads.js';
import type { BenchOptions } from './options.js';
import { daemonCpuTimes, daemonRssKiB, groupMembers, groupPssKiB } from './proc.js';
import { RunningServer, type Child, type Files, type ServerSpec } from './servers.js';

/** One figure of one round: a number, a note (a status such as "deadlock", or a qualifier), or both. */
export interface Value {
  n?: number;
  note?: string;
}

export type Figures = Record<string, Value>;

const MiB = 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Servers that are running now, so that an interrupted run stops them. */
export const running = new Set<RunningServer>();

async function withServer(spec: ServerSpec, child: Child, files: Files, repo: string, body: (server: RunningServer, generator: Generator) => Promise<void>, profileDir?: string): Promise<void> {
  const server = await RunningServer.start(spec, child, files, repo, profileDir);
  running.add(server);
  let generator: Generator | undefined;
  try {
    generator = await Generator.start(files.clientKey, files.clientCert);
    await body(server, generator);
  } finally {
    generator?.close();
    await server.stop();
    running.delete(server);
  }
}

function failures(result: RateResult): string | undefined {
  if (result.failed === 0) return undefined;
  const reasons = Object.entries(result.errors)
    .map(([error, count]) => `${count} ${error}`)
    .join(', ');
  return `${result.failed} failed: ${reasons}`;
}

function streamValue(result: StreamResult): Value {
  return result.status === 'ok' ? { n: result.mibPerSecond } : { note: result.status === 'deadlock' ? 'deadlock' : `${result.status}` };
}

/**
 * Connections served, uncounted, between the rate run just after start and the steady one: tlsd's
 * CPU per connection fell by a quarter to a third over its first two to three thousand (V8
 * optimising its code; 1.65 ms in the first thousand after a hundred, 1.2 from the third on).
 */
export const STEADY_AFTER_CONNECTIONS = 1_000;

/** Served by each fresh server before anything is counted (but the download server, see below). */
export const WARM_UP_CONNECTIONS = 100;

const warmUpCount = (options: BenchOptions): number => Math.min(WARM_UP_CONNECTIONS, options.connections);

type Target = { port: number; tls: boolean };

const rateCap = (count: number): number => Math.max(60_000, count * 100);

/** One rate load, with the deadlines every rate run has. */
function rateLoad(generator: Generator, target: Target, count: number, inFlight: number, timeoutMs = 10_000, maxFailures = 50): Promise<RateResult> {
  return generator.request<RateResult>({ op: 'rate', ...target, count, inFlight, timeoutMs, capMs: rateCap(count), maxFailures }, rateCap(count) + 30_000);
}

/** A rate load that is not counted; its failures are still told, since they make the next figure less warm than it says. */
async function uncounted(generator: Generator, target: Target, count: number, inFlight: number, what: string, log: (line: string) => void): Promise<void> {
  const note = failures(await rateLoad(generator, target, count, inFlight));
  if (note) log(`  ${what} (not counted): ${note}`);
}

/**
 * One measured rate run: the client's figures and the daemon's CPU time over exactly that run,
 * under the rate rows' keys; and the failures, if any, for the log.
 */
async function rateRun(generator: Generator, target: Target, server: RunningServer, options: BenchOptions): Promise<{ figures: Figures; note?: string }> {
  await sleep(500); // the run before is torn down and its children reaped
  const before = daemonCpuTimes(server.pid);
  const result = await rateLoad(generator, target, options.connections, options.inFlight);
  await sleep(500); // the last children are reaped
  const after = daemonCpuTimes(server.pid);
  const note = failures(result);
  const figures: Figures = { rate: { n: result.perSecond, note: note && `${result.failed} failed` }, rateP50: { n: result.p50 }, rateP99: { n: result.p99 }, protocol: { note: result.protocol } };
  if (result.done > 0) {
    const perConnection = (ms: number): Value => ({ n: ms / result.done });
    figures.cpuOwn = perConnection(after.own - before.own);
    figures.cpuSystem = perConnection(after.system - before.system);
    figures.cpuPrimary = perConnection(after.byRole.primary - before.byRole.primary);
    if ((server.spec.workers ?? 1) > 1) figures.cpuWorkers = perConnection(after.byRole.worker - before.byRole.worker);
    if (server.spec.workers !== undefined) figures.cpuHelpers = perConnection(after.byRole.helper - before.byRole.helper);
    figures.cpuTree = perConnection(after.own + after.children - before.own - before.children);
    figures.cpuGenerator = perConnection(result.generatorCpuMs);
  }
  return { figures, note };
}

/**
 * A stream load three times on one server: the first transfer (reported), a second uncounted, then
 * the steady one (reported): tlsd spent 2.5 ms of CPU per MiB echoed in its first two 256 MiB and
 * 2.0–2.2 from the third on, with V8's optimiser switched off 2.8 throughout.
 */
async function firstAndSteady(run: () => Promise<StreamResult>, what: string, log: (line: string) => void): Promise<[Value, Value]> {
  const results: StreamResult[] = [];
  for (let i = 0; i < 3; i++) {
    const result = await run();
    results.push(result);
    if (result.status === 'ok') continue;
    log(`  ${what}${[', first transfer', ', second transfer (not counted)', ''][i]}: ${result.status}: ${result.detail}`);
    // A server that deadlocks (ncat) would only wait out the stall timeout twice more.
    if (i === 0 && (result.status === 'deadlock' || result.status === 'timeout')) return [streamValue(result), streamValue(result)];
  }
  return [streamValue(results[0]!), streamValue(results[2]!)];
}

/**
 * The 'main' phase runs every load but idle; the 'idle' phase only idle (thousands of connections
 * and, for most servers, thousands of processes: run after every main round, so that setting them
 * up and tearing them down never disturbs another server's figures).
 */
export async function measureServer(spec: ServerSpec, options: BenchOptions, files: Files & { dataHash: string }, repo: string, phase: 'main' | 'idle', log: (line: string) => void): Promise<Figures> {
  const figures: Figures = {};
  const loads = new Set([...options.loads].filter((load) => (phase === 'idle') === (load === 'idle')));
  const port = (server: RunningServer): Target => ({ port: server.port, tls: spec.tls });

  if (loads.has('rate') || loads.has('latency') || loads.has('silent') || loads.has('bulk')) {
    await withServer(spec, 'echo', files, repo, async (server, generator) => {
      const target = port(server);
      const rate = (count: number, inFlight: number, timeoutMs?: number, maxFailures?: number): Promise<RateResult> => rateLoad(generator, target, count, inFlight, timeoutMs, maxFailures);
      await uncounted(generator, target, warmUpCount(options), 8, `${spec.name} warm-up`, log); // loads the server's code
      // Just after start here, steady further down: a Node server compiles its hot paths while it
      // serves (V8's JIT), a long-running daemon lives past that, and a C server has none of it.
      if (loads.has('rate')) {
        const cold = await rateRun(generator, target, server, options);
        if (cold.note) log(`  ${spec.name} rate, just after start: ${cold.note}`);
        figures.rateCold = cold.figures.rate!;
        if (cold.figures.cpuOwn) figures.cpuOwnCold = cold.figures.cpuOwn;
      }
      let baseline: RateResult | undefined;
      if (loads.has('latency') || loads.has('silent')) {
        // Settle first, not counted: right after the rate load a server may still be reaping
        // children and collecting garbage, which made tlsd's baseline slow and its silent row
        // negative (-8 to -17 %) in every round of one run.
        await rate(Math.min(50, options.latencyCount), 1);
        baseline = await rate(options.latencyCount, 1);
        const note = failures(baseline);
        if (note) log(`  ${spec.name} latency: ${note}`);
        figures.latP50 = { n: baseline.p50 };
        figures.latP99 = { n: baseline.p99 };
      }
      if (loads.has('silent') && baseline) {
        const { opened } = await generator.request<{ opened: number }>({ op: 'silent', port: server.port, count: options.silentCount, timeoutMs: 5_000 }, 30_000);
        await sleep(300);
        const result = await rate(options.latencyCount, 1, 3_000, 3);
        await generator.request({ op: 'release' }, 30_000);
        const note = failures(result);
        if (note) log(`  ${spec.name} with ${opened} silent connections: ${note}`);
        if (result.failed >= 3 && result.done < options.latencyCount) figures.silent = { note: 'blocked' };
        else figures.silent = { n: (result.p50 / baseline.p50 - 1) * 100, note: opened < options.silentCount ? `${opened} opened` : undefined };
      }
      if (loads.has('rate')) {
        await uncounted(generator, target, STEADY_AFTER_CONNECTIONS, options.inFlight, `${spec.name} rate`, log);
        const steady = await rateRun(generator, target, server, options);
        if (steady.note) log(`  ${spec.name} rate: ${steady.note}`);
        Object.assign(figures, steady.figures);
      }
      if (loads.has('bulk')) {
        const total = options.bulkMiB * MiB;
        const capMs = Math.max(60_000, options.bulkMiB * 500);
        const bulk = (): Promise<StreamResult> => generator.request<StreamResult>({ op: 'bulk', ...target, total, stallMs: options.stallMs, capMs }, capMs + 30_000);
        [figures.bulkFirst, figures.bulk] = await firstAndSteady(bulk, `${spec.name} bulk`, log);
      }
    });
  }

  if (loads.has('download')) {
    // No warm-up connections here: this server's child sends the whole file to whoever connects.
    await withServer(spec, 'download', files, repo, async (server, generator) => {
      const total = options.downloadMiB * MiB;
      const capMs = Math.max(60_000, options.downloadMiB * 500);
      const download = (): Promise<StreamResult> => generator.request<StreamResult>({ op: 'download', ...port(server), total, hash: files.dataHash, stallMs: options.stallMs, capMs }, capMs + 30_000);
      [figures.downloadFirst, figures.download] = await firstAndSteady(download, `${spec.name} download`, log);
    });
  }

  if (loads.has('idle')) {
    await withServer(spec, 'echo', files, repo, async (server, generator) => {
      // As for the other loads: what the first connections load and compile is the daemon's, not
      // any peer's (tlsd: 143 KiB "per peer" at 64 peers when counted from a server that had
      // served none). That count is still shown for the last level.
      const fresh = daemonRssKiB(server.pid);
      const members = groupMembers(server.pid).length;
      await uncounted(generator, port(server), warmUpCount(options), 8, `${spec.name} idle warm-up`, log);
      // Its children reaped, its connections gone (a forking server's processes show it).
      for (let waited = 0; groupMembers(server.pid).length > members && waited < 10_000; waited += 100) await sleep(100);
      await sleep(500);
      const rss0 = daemonRssKiB(server.pid);
      const pss0 = groupPssKiB(server.pid, 10_000);
      let held = 0;
      let rss = rss0;
      for (const level of options.idleLevels) {
        const capMs = Math.max(60_000, level * 30);
        const fill = await generator.request<{ held: number; failed: number; errors: Record<string, number> }>(
          { op: 'hold', ...port(server), total: level, inFlight: 32, timeoutMs: 10_000, capMs, maxFailures: 50 },
          capMs + 30_000,
        );
        await sleep(1_000);
        const now = await generator.request<{ held: number; dropped: number }>({ op: 'held' }, 10_000);
        held = now.held;
        rss = daemonRssKiB(server.pid);
        const note = held < level ? `${held} held` : undefined;
        if (fill.failed > 0) log(`  ${spec.name} idle ${level}: ${fill.failed} failed (${Object.entries(fill.errors).map(([e, c]) => `${c} ${e}`).join(', ')}), ${held} held`);
        figures[`idle${level}`] = held > 0 ? { n: (rss - rss0) / held, note } : { note: 'none held' };
        if (held < level) break;
      }
      const pss = pss0 === undefined ? undefined : groupPssKiB(server.pid, 20_000);
      if (pss !== undefined && held > 0) figures.idleTree = { n: (pss - pss0!) / held, note: `at ${held}` };
      if (held > 0) figures.idleFresh = { n: (rss - fresh) / held, note: `at ${held}` };
      await generator.request({ op: 'release' }, 30_000);
    });
  }
  return figures;
}

/**
 * A tlsd server under the rate load with `node --cpu-prof`, just after start (a profile covers the
 * whole process life, so a steady one would be mostly warm-up); returns the connections made, the
 * main process's pid (its profile's name carries it; with --workers each worker writes one too) and
 * that process's own CPU time over them (from /proc), to turn the profile's shares into time per
 * connection.
 */
export async function profileTlsd(spec: ServerSpec, options: BenchOptions, files: Files, repo: string, profileDir: string): Promise<{ done: number; primaryMs: number; pid: number }> {
  let done = 0;
  let primaryMs = NaN;
  let pid = 0;
  await withServer(
    spec,
    'echo',
    files,
    repo,
    async (server, generator) => {
      pid = server.pid;
      const target = { port: server.port, tls: spec.tls };
      await rateLoad(generator, target, warmUpCount(options), 8);
      const before = daemonCpuTimes(server.pid);
      const result = await rateLoad(generator, target, options.connections, options.inFlight);
      await sleep(500);
      primaryMs = daemonCpuTimes(server.pid).byRole.primary - before.byRole.primary;
      done = result.done;
    },
    profileDir,
  );
  return { done, primaryMs, pid };
}
