/** The runner's options: `npm run bench -- [--quick] [--rounds N] ...`. */

export interface BenchOptions {
  quick: boolean;
  rounds: number;
  /** rate: fresh connections, and how many in flight. */
  connections: number;
  inFlight: number;
  /** Connections of the 1-in-flight latency run (and of the silent-connection run). */
  latencyCount: number;
  silentCount: number;
  bulkMiB: number;
  downloadMiB: number;
  idleLevels: number[];
  /** Rounds that include the idle load (the slowest: up to 10,000 handshakes per server). */
  idleRounds: number;
  startupRepeats: number;
  /** No progress for this long while bytes are owed: a deadlock. */
  stallMs: number;
  servers?: string[];
  loads: Set<Load>;
  write?: string;
  profile: boolean;
}

export const allLoads = ['rate', 'latency', 'silent', 'bulk', 'download', 'idle', 'startup'] as const;
export type Load = (typeof allLoads)[number];

const usage = `usage: npm run bench -- [option ...]
  --quick              a sanity run in a minute or two (1 round, small counts)
  --rounds N           rounds; each figure is the median (default 3)
  --connections N      rate: fresh connections (default 1000)
  --in-flight C        rate: connections in flight (default 32)
  --latency-count N    1-in-flight runs, with and without silent connections (default 200)
  --silent N           silent connections (default 100)
  --bulk-mib N         bulk echo size (default 256)
  --download-mib N     download size (default 256)
  --idle K,K,...       idle levels (default 64,1000,10000)
  --idle-rounds N      rounds that include the idle load (default 1: it is the slowest)
  --startup-repeats N  runs of each program for start-up times (default 10)
  --servers a,b        only these (tlsd,tlsd-w2,stunnel,socat,ncat,node-spawn,node-echo,socat-tcp)
  --loads a,b          only these (${allLoads.join(',')})
  --write FILE         write the results into FILE (docs/performance.md) between its markers
  --profile            also profile tlsd (and tlsd-w2's primary) under the rate load (node --cpu-prof) and summarize it`;

export function parseOptions(argv: string[]): BenchOptions {
  const quick = argv.includes('--quick');
  const options: BenchOptions = quick
    ? { quick, rounds: 1, connections: 200, inFlight: 16, latencyCount: 50, silentCount: 100, bulkMiB: 32, downloadMiB: 32, idleLevels: [64, 500], idleRounds: 1, startupRepeats: 5, stallMs: 3_000, loads: new Set(allLoads), profile: false }
    : { quick, rounds: 3, connections: 1000, inFlight: 32, latencyCount: 200, silentCount: 100, bulkMiB: 256, downloadMiB: 256, idleLevels: [64, 1000, 10_000], idleRounds: 1, startupRepeats: 10, stallMs: 5_000, loads: new Set(allLoads), profile: false };
  const positive = (flag: string, value: string | undefined): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) fail(`${flag} needs a positive integer`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = (): string => argv[++i] ?? fail(`${flag} needs a value`);
    switch (flag) {
      case '--quick':
        break;
      case '--rounds':
        options.rounds = positive(flag, value());
        break;
      case '--connections':
        options.connections = positive(flag, value());
        break;
      case '--in-flight':
        options.inFlight = positive(flag, value());
        break;
      case '--latency-count':
        options.latencyCount = positive(flag, value());
        break;
      case '--silent':
        options.silentCount = positive(flag, value());
        break;
      case '--bulk-mib':
        options.bulkMiB = positive(flag, value());
        break;
      case '--download-mib':
        options.downloadMiB = positive(flag, value());
        break;
      case '--idle':
        options.idleLevels = value()
          .split(',')
          .map((level) => positive(flag, level))
          .sort((a, b) => a - b);
        break;
      case '--idle-rounds':
        options.idleRounds = positive(flag, value());
        break;
      case '--startup-repeats':
        options.startupRepeats = positive(flag, value());
        break;
      case '--servers':
        options.servers = value().split(',');
        break;
      case '--loads': {
        const loads = value().split(',');
        for (const load of loads) if (!(allLoads as readonly string[]).includes(load)) fail(`unknown load ${load}`);
        options.loads = new Set(loads as Load[]);
        break;
      }
      case '--write':
        options.write = value();
        break;
      case '--profile':
        options.profile = true;
        break;
      case '-h':
      case '--help':
        console.log(usage);
        process.exit(0);
      default:
        fail(`unknown option ${flag}`);
    }
  }
  return options;
}

function fail(message: string): never {
  console.error(`bench: ${message}\n${usage}`);
  process.exit(2);
}
