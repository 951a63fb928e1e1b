/**
 * `npm run bench`: tlsd side by side with stunnel, socat (TLS and plain TCP), ncat and two plain-Node
 * reference servers (bench/node-tls-server.ts), each started on loopback with the same EC P-256
 * certificates and the same child (`cat`), under the same loads; one table of medians over rounds,
 * each figure beside its ratio to tlsd.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatSummary, summarize } from './cpuprofile.js';
import { measureServer, profileTlsd, running, STEADY_AFTER_CONNECTIONS, WARM_UP_CONNECTIONS, type Figures } from './measure.js';
import { parseOptions, type BenchOptions } from './options.js';
import { checkTargets, resultsTable, startupTable, targetsTable, type Results } from './report.js';
import { servers as allServers, type Files, type ServerSpec } from './servers.js';
import { describeMachine, ensureServers, prepareFiles, type Machine } from './setup.js';
import { measureStartup, type StartupResult } from './startup.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const wantedFiles = 65_536;

/** Runs the bench again under a raised `ulimit -n` (as high as the hard limit allows), once. */
function raiseFileLimit(): void {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const soft = Number(/^Max open files\s+(\d+)/m.exec(limits)?.[1] ?? wantedFiles);
  if (soft >= wantedFiles || process.env.TLSD_BENCH_RAISED === '1') return;
  const script = `ulimit -n ${wantedFiles} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"`;
  const run = spawnSync('sh', ['-c', script, process.execPath, ...process.argv.slice(1)], { stdio: 'inherit', env: { ...process.env, TLSD_BENCH_RAISED: '1' } });
  process.exit(run.status ?? 1);
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

function fileLimit(): string {
  return /^Max open files\s+(\d+)\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.slice(1).join(' (hard ') + ')';
}

/** A server's command line with the temporary paths replaced by names, for the notes. */
function commandLine(spec: ServerSpec, files: Files, child: 'echo' | 'download'): string {
  const { file, args } = spec.command(5600, child, files);
  const text = [file === process.execPath ? 'node' : file, ...args].map((arg) => (/[\s"]/.test(arg) ? `'${arg}'` : arg)).join(' ');
  return text
    .replaceAll(files.serverKey, 'KEY')
    .replaceAll(files.serverCert, 'CERT')
    .replaceAll(files.clientCert, 'CLIENT_CERT')
    .replaceAll(files.data, 'FILE')
    .replace(/\S*stunnel-5600\.conf/, 'stunnel.conf');
}

function stunnelConf(files: Files): string {
  return readFileSync(join(files.dir, 'stunnel-5600.conf'), 'utf8')
    .replaceAll(files.serverKey, 'KEY')
    .replaceAll(files.serverCert, 'CERT')
    .replaceAll(files.clientCert, 'CLIENT_CERT')
    .trim();
}

function report(options: BenchOptions, machine: Machine, specs: ServerSpec[], results: Results, startup: StartupResult[], files: Files, argv: string[], elapsedS: number, profiles: { name: string; text: string }[]): string {
  const lines: string[] = [];
  lines.push(`Run ${machine.date}: \`npm run bench${argv.length ? ` -- ${argv.join(' ')}` : ''}\` (${elapsedS.toFixed(0)} s).`);
  lines.push('');
  lines.push(
    `Machine: ${machine.cpus} CPUs (${machine.cpuModel}), ${machine.memory} RAM, ${machine.kernel}, Node.js ${machine.node} (OpenSSL ${machine.nodeOpenssl}), system ${machine.systemOpenssl}; ` +
      `${Object.entries(machine.versions)
        .map(([name, version]) => `${name}: ${version}`)
        .join(', ')}. \`ulimit -n\` ${fileLimit()}. The load generator (one Node process) shares the CPUs with the server.`,
  );
  lines.push('');
  lines.push(`Load average (1, 5, 15 min) at the start: ${machine.loadBefore}; at the end: ${os.loadavg().map((n) => n.toFixed(2)).join(', ')}.`);
  lines.push('');
  lines.push(
    `Medians of ${options.rounds} round${options.rounds > 1 ? 's' : ''} (the idle rows: ${Math.min(options.idleRounds, options.rounds)}); ×N is the figure divided by tlsd's (for conn/s and MiB/s above 1 means faster than tlsd; for ms and KiB, above 1 means slower or bigger). ` +
      `EC P-256 certificates from tlsd-keygen; mutual TLS everywhere except ncat (it cannot ask for a client certificate) and the plain-TCP floor.`,
  );
  lines.push('');
  if (specs.length > 0) lines.push(resultsTable(results, specs, options));
  lines.push('');
  lines.push('Notes on the columns:');
  for (const spec of specs) if (spec.note) lines.push(`- ${spec.name}: ${spec.note}.`);
  lines.push(
    "- CPU per connection is the server's own utime+stime from /proc/PID/stat over the rate run (for tlsd: the main process plus its spawn helper; for tlsd-w2 the primary, its workers and their spawn helpers, found by walking the process tree), divided by the connections; " +
      'children (cat, and the per-connection processes of forking servers) are excluded. The row "with reaped children" adds cutime+cstime, which covers every child the server has waited for.',
  );
  lines.push('- Idle RSS per peer is (VmRSS one second after the K-th peer connected − VmRSS after the warm-up, its connections and children gone) / K of the server process alone (tlsd: with its spawn helper; tlsd-w2: summed over the primary, its workers and their helpers); the row "counted from before the warm-up" uses the VmRSS of the server before its first connection instead, as this page did until 35cee15. "Whole group PSS" counts every process of the server\'s process group (children included, shared pages split).');
  lines.push(
    `- Steady state, and just after start: each server is started fresh for each round and phase and serves ${WARM_UP_CONNECTIONS} connections (8 in flight) before anything is counted, ` +
      'but the download server, whose child sends the whole file to whoever connects. ' +
      'The rate rows come from the third rate run: the first is counted as "just after start", then come the latency and silent loads, then ' +
      `${STEADY_AFTER_CONNECTIONS} connections not counted. Bulk and download run three times each on their server: the first transfer is the "first transfer" row (for bulk, after the rate, latency and silent loads on the same server), the second is not counted, the third is the main row. ` +
      "A Node server compiles its hot code while it serves (V8's JIT), so its first thousands of connections and first hundreds of MiB cost it more CPU than the rest of its life, which is where a long-running daemon spends it. " +
      'The C servers have no such phase (stunnel gets slower as it serves); the load generator (Node) has one, and goes through the same sequence against every server. ' +
      'The targets are checked against the steady figures, and the targets table gives the earlier comparison beside them.',
  );
  lines.push('- "deadlock": no byte moved either way for the stall timeout while bytes were still owed; the run went on with the next load.');
  lines.push('');
  if (startup.length > 0) {
    lines.push(`Start-up, whole processes (${options.startupRepeats} runs each, before the other loads: the idle phase leaves the machine loaded for minutes):`);
    lines.push('');
    lines.push(startupTable(startup));
    lines.push('');
  }
  for (const { name, text } of profiles) {
    const whose = name === 'tlsd' ? "tlsd's" : `${name}'s primary's`;
    lines.push(`Where ${whose} CPU time goes under the rate load (\`--profile\`: \`node --cpu-prof\`, a separate run after the table's rounds):`);
    lines.push('');
    lines.push('```');
    lines.push(text);
    lines.push('```');
    lines.push('');
  }
  lines.push('Targets:');
  lines.push('');
  lines.push(targetsTable(checkTargets(results, specs, options, startup)));
  lines.push('');
  lines.push('Servers, as started (KEY/CERT: the server identity; CLIENT_CERT: the client certificate, self-signed, used as the CA file; FILE: the download file):');
  lines.push('');
  lines.push('```sh');
  for (const spec of specs) lines.push(commandLine(spec, files, 'echo'));
  lines.push('# download: the same with the child `cat FILE`, e.g.');
  const tlsd = specs.find((spec) => spec.name === 'tlsd');
  if (tlsd) lines.push(commandLine(tlsd, files, 'download'));
  lines.push('```');
  if (specs.some((spec) => spec.name === 'stunnel')) {
    lines.push('', 'stunnel.conf:', '', '```ini', stunnelConf(files), '```');
  }
  return lines.join('\n');
}

const begin = '<!-- bench:begin (written by `npm run bench -- --write docs/performance.md`) -->';
const end = '<!-- bench:end -->';

function writeInto(file: string, text: string): void {
  const block = `${begin}\n${text}\n${end}`;
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const from = old.indexOf(begin.slice(0, 18));
  const to = old.indexOf(end);
  const updated = from >= 0 && to > from ? old.slice(0, from) + block + old.slice(to + end.length) : `# Performance\n\n${block}\n${old}`;
  writeFileSync(file, updated);
}

async function main(): Promise<void> {
  raiseFileLimit();
  const argv = process.argv.slice(2);
  const options = parseOptions(argv);
  const started = Date.now();
  if (!existsSync(join(repo, 'dist/tlsd.cjs'))) throw new Error('dist/ is missing: run npm run build first');
  let specs = options.servers ? allServers.filter((spec) => options.servers!.includes(spec.name)) : allServers;
  specs = ensureServers(specs, log);
  const files = prepareFiles(repo, options.loads.has('download') ? options.downloadMiB * 1024 * 1024 : 0);
  const machine = describeMachine();
  if (os.loadavg()[0]! > 0.5) log(`bench: the machine is busy (load average ${machine.loadBefore}): figures will be low and noisy`);
  log(`bench: ${specs.map((spec) => spec.name).join(', ')}; ${options.rounds} round(s); ulimit -n ${fileLimit()}; files in ${files.dir}`);
  const softFiles = Number(/^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1]);
  const topIdle = options.loads.has('idle') ? Math.max(...options.idleLevels) : 0;
  // tlsd holds three descriptors per peer (the TLS socket, the child's stdin and stdout), each
  // worker its own peers' (the limit is per process); stunnel two.
  for (const spec of specs.filter((spec) => spec.workers !== undefined)) {
    const fits = Math.floor((softFiles - 200) / 3) * spec.workers!;
    if (topIdle > fits) log(`bench: ulimit -n is ${softFiles}: ${spec.name} can hold about ${fits} peers, fewer than the idle level ${topIdle} (--idle sets the levels)`);
  }

  const stop = (): void => {
    log('bench: interrupted, stopping servers');
    for (const server of running) void server.stop(500);
    setTimeout(() => process.exit(130), 3_000);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  const results: Results = new Map();
  try {
    const measure = async (spec: ServerSpec, phase: 'main' | 'idle', round: number, rounds: number): Promise<void> => {
      const t0 = Date.now();
      let figures: Figures;
      try {
        figures = await measureServer(spec, options, files, repo, phase, log);
      } catch (error) {
        log(`  ${spec.name}: ${(error as Error).message}`);
        figures = {};
      }
      const list = results.get(spec.name) ?? [];
      list[round - 1] = { ...list[round - 1], ...figures };
      results.set(spec.name, list);
      const brief = Object.entries(figures)
        .map(([key, value]) => `${key}=${value.n !== undefined ? +value.n.toFixed(2) : ''}${value.note ? `(${value.note})` : ''}`)
        .join(' ');
      log(`${phase === 'idle' ? 'idle ' : ''}round ${round}/${rounds} ${spec.name} (${((Date.now() - t0) / 1000).toFixed(0)} s, load ${os.loadavg()[0]!.toFixed(2)}): ${brief}`);
    };
    // Start-up first, on a quiet machine: after the idle phase, thousands of exiting children keep
    // the load average in the hundreds for minutes, and a whole-process time shows it most.
    let startup: StartupResult[] = [];
    if (options.loads.has('startup')) {
      startup = await measureStartup(repo, files, options.startupRepeats);
      log(`start-up: ${startup.map((result) => `${result.name} ${result.medianMs?.toFixed(0) ?? result.error}`).join(', ')}`);
    }
    if (options.loads.size > (options.loads.has('idle') ? 1 : 0) + (options.loads.has('startup') ? 1 : 0))
      for (let round = 1; round <= options.rounds; round++) for (const spec of specs) await measure(spec, 'main', round, options.rounds);
    if (options.loads.has('idle')) {
      const idleRounds = Math.min(options.idleRounds, options.rounds);
      for (let round = 1; round <= idleRounds; round++)
        for (const spec of specs) {
          await measure(spec, 'idle', round, idleRounds);
          await new Promise((resolve) => setTimeout(resolve, 5_000)); // thousands of processes and sockets torn down
        }
    }


    // One profile per tlsd server in the run, of its main process (with --workers, the primary:
    // the part of the daemon that does not spread over cores).
    const profiles: { name: string; text: string }[] = [];
    if (options.profile)
      for (const spec of specs.filter((spec) => spec.workers !== undefined)) {
        const profileDir = mkdtempSync(join(os.tmpdir(), 'tlsd-profile-'));
        const { done, primaryMs, pid } = await profileTlsd(spec, options, files, repo, profileDir);
        // node names each profile CPU.<date>.<time>.<pid>.<thread>.<n>.cpuprofile; a worker writes its own.
        const file = readdirSync(profileDir).find((name) => name.endsWith('.cpuprofile') && name.split('.')[3] === String(pid));
        if (!file) {
          log(`bench: ${spec.name} wrote no CPU profile`);
          continue;
        }
        log(`bench: ${spec.name} CPU profile under the rate load (${done} connections, ${options.inFlight} in flight): ${join(profileDir, file)}`);
        const summary = summarize(JSON.parse(readFileSync(join(profileDir, file), 'utf8')));
        profiles.push({
          name: spec.name,
          text:
            `${done} connections, ${options.inFlight} in flight; just after start (the profile covers the process's whole life: start-up, the warm-up, the run, shut-down), so its figures compare with the just-after-start rows.\n` +
            formatSummary(summary, done, done > 0 ? primaryMs / done : undefined, 15),
        });
      }

    const text = report(options, machine, specs, results, startup, files, argv, (Date.now() - started) / 1000, profiles);
    console.log(`\n${text}\n`);
    if (options.write) {
      writeInto(resolve(process.env.INIT_CWD ?? process.cwd(), options.write), text);
      log(`bench: wrote ${options.write}`);
    }
  } finally {
    rmSync(files.dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  log(`bench: ${(error as Error).stack ?? error}`);
  for (const server of running) void server.stop(500);
  setTimeout(() => process.exit(1), 1_000);
});
