import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestIdentity } from '../identity.js';
import { childrenOf, countMatches, quietSyslog } from '../limits-faults.js';
import { bin, watch, type RunningTlsd } from '../tlsd.js';
import type { CaseContext } from './case.js';

export interface SoakTlsd extends RunningTlsd {
  pid: number;
  running(): boolean;
  /** Sends a signal to tlsd itself. */
  signal(name: NodeJS.Signals): void;
}

export interface SoakStart {
  identity?: TestIdentity;
  options?: string[];
  command: string[];
  /** Added to the runner's environment; syslog goes to a missing socket unless this says otherwise. */
  env?: NodeJS.ProcessEnv;
  stdin?: 'pipe' | 'ignore';
  /** `ulimit -n` for tlsd (soft and hard), set by a shell that then execs tlsd in its place. */
  nofile?: number;
  /** Pass -e (default true); without it tlsd writes to stderr only when syslog fails. */
  stderr?: boolean;
  /** Wait for the Listening line (default true). */
  listening?: boolean;
}

/**
 * The real bin/tlsd on 127.0.0.1 with a random port, killed at the end of the case. With `nofile`
 * it runs under `sh -c 'ulimit -n N && exec …'`, so the pid watched is still tlsd's own.
 */
export async function startSoakTlsd(ctx: CaseContext, start: SoakStart): Promise<SoakTlsd> {
  const tlsdArgs = [
    bin('tlsd'),
    ...(start.stderr === false ? [] : ['-e']),
    '-b',
    '127.0.0.1',
    ...(start.identity ? ['-k', start.identity.key, '-c', start.identity.cert] : []),
    ...(start.options ?? []),
    '--',
    ...start.command,
  ];
  // Under tap, NODE_OPTIONS loads the runner's TypeScript and process-info hooks into every Node
  // program started: they are the runner's, not tlsd's, and cost each tlsd and child dearly.
  const env = { ...process.env, ...quietSyslog, NODE_OPTIONS: '', ...start.env };
  const stdio: ['pipe' | 'ignore', 'ignore', 'pipe'] = [start.stdin ?? 'ignore', 'ignore', 'pipe'];
  const proc =
    start.nofile === undefined
      ? spawn(process.execPath, tlsdArgs, { stdio, env })
      : spawn('sh', ['-c', `ulimit -n ${start.nofile} && exec "$@"`, 'sh', process.execPath, ...tlsdArgs], { stdio, env });
  proc.stdin?.on('error', () => {}); // tlsd may be gone when a case writes a line
  const watched = watch(proc);
  const tlsd: SoakTlsd = Object.assign(watched, {
    pid: proc.pid!,
    running: () => proc.exitCode === null && proc.signalCode === null,
    signal: (name: NodeJS.Signals) => void proc.kill(name),
  });
  ctx.teardown(async () => {
    if (tlsd.running()) {
      proc.kill('SIGKILL');
      await tlsd.exited;
    }
    // Children tlsd left behind (it was killed, or it leaked them) must not outlive the case.
    for (const child of childrenOf(tlsd.pid)) killQuietly(child.pid);
  });
  if (start.listening ?? true) {
    const match = await tlsd.waitFor(/Listening on \S+, port (\d+)/, 20_000);
    tlsd.port = Number(match[1]);
  }
  return tlsd;
}

export function killQuietly(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (!(pid > 1)) return; // 0 and -1 would mean whole process groups, ours included
  try {
    process.kill(pid, signal);
  } catch {
    // gone already
  }
}

export interface Usage {
  fds: number;
  rssMiB: number;
  children: number;
  zombies: number;
}

/** tlsd's descriptors, resident memory and children, straight from /proc. */
export function usage(pid: number): Usage {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  const children = childrenOf(pid);
  return {
    fds: readdirSync(`/proc/${pid}/fd`).length,
    rssMiB: Math.round((rssKiB / 1024) * 10) / 10,
    children: children.length,
    zombies: children.filter((child) => child.state === 'Z').length,
  };
}

/** A process's descriptors by what they are: TCP and Unix sockets, pipes, files … */
export function descriptorKinds(pid: number): Map<string, number> {
  const inodes = (file: string, column: number): Set<string> => {
    try {
      return new Set(readFileSync(file, 'utf8').split('\n').slice(1).map((line) => line.trim().split(/\s+/)[column]!).filter(Boolean));
    } catch {
      return new Set();
    }
  };
  const unix = inodes('/proc/net/unix', 6);
  const tcp = new Set([...inodes('/proc/net/tcp', 9), ...inodes('/proc/net/tcp6', 9)]);
  const kinds = new Map<string, number>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed while we looked
    }
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    const kind = inode ? (unix.has(inode) ? 'Unix socket' : tcp.has(inode) ? 'TCP socket' : 'socket') : target.replace(/:\[\d+\]$/, '').replace(/^anon_inode:\[?([^\]]*)\]?$/, '$1');
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return kinds;
}

/** What a process holds beyond a baseline taken with descriptorKinds: `+10 Unix socket, +1 pipe`. */
export function extraDescriptors(pid: number, baseline: Map<string, number>): string {
  let now: Map<string, number>;
  try {
    now = descriptorKinds(pid);
  } catch {
    return 'process gone';
  }
  const extra = [...now].map(([kind, n]) => [kind, n - (baseline.get(kind) ?? 0)] as const).filter(([, n]) => n > 0);
  return extra.map(([kind, n]) => `+${n} ${kind}`).join(', ') || 'none beyond the baseline';
}

export interface Tracker {
  readonly before: Usage;
  /** The descriptors at the start, by kind (see extraDescriptors). */
  readonly beforeKinds: Map<string, number>;
  /** The largest figures seen so far, sampled every 100 ms. */
  peak(): Usage;
  stop(): Usage;
}

/** Samples tlsd's usage while a case runs, so that the worst moment is in the table. */
export function track(pid: number): Tracker {
  const before = usage(pid);
  const beforeKinds = descriptorKinds(pid);
  const peak = { ...before };
  const sample = (): void => {
    try {
      const now = usage(pid);
      peak.fds = Math.max(peak.fds, now.fds);
      peak.rssMiB = Math.max(peak.rssMiB, now.rssMiB);
      peak.children = Math.max(peak.children, now.children);
      peak.zombies = Math.max(peak.zombies, now.zombies);
    } catch {
      // tlsd is gone: the case sees that for itself
    }
  };
  const timer = setInterval(sample, 100);
  return {
    before,
    beforeKinds,
    peak: () => ({ ...peak }),
    stop() {
      clearInterval(timer);
      sample();
      return { ...peak };
    },
  };
}

export interface SettleOptions {
  /** Descriptors above the baseline that still count as back (default 2). */
  fdSlack?: number;
  /** Wait at most this long (default 20 s, 12 s in the quick profile: a session may linger 10 s for its peer). */
  ms?: number;
  /** RSS above the baseline that still counts as back, in MiB (default 64 or half the baseline). */
  rssSlackMiB?: number;
  /**
   * 'baseline' (default): RSS must come back near the baseline. 'rounds': the case compares the
   * RSS after each of several rounds itself (V8 and malloc keep freed memory; growth is a leak).
   */
  rss?: 'baseline' | 'rounds';
}

/**
 * Waits until tlsd has no children left and its descriptors and memory are back near the
 * baseline, or until the deadline; fills in the row's figures and checks them.
 */
export async function settle(ctx: CaseContext, tlsd: SoakTlsd, tracker: Tracker, options: SettleOptions = {}): Promise<Usage> {
  const peak = tracker.stop();
  const { before } = tracker;
  const fdSlack = options.fdSlack ?? 2;
  const rssSlack = options.rssSlackMiB ?? Math.max(64, before.rssMiB * 0.5);
  const deadline = Date.now() + (options.ms ?? ctx.profile.pick(12_000, 20_000));
  let after = usage(tlsd.pid);
  const rssBack = (u: Usage): boolean => options.rss === 'rounds' || u.rssMiB <= before.rssMiB + rssSlack;
  while (Date.now() < deadline && (after.children > 0 || after.fds > before.fds + fdSlack || !rssBack(after))) {
    await sleep(250);
    after = usage(tlsd.pid);
  }
  ctx.fds = { before: before.fds, during: peak.fds, after: after.fds };
  ctx.rssMiB = { before: before.rssMiB, during: peak.rssMiB, after: after.rssMiB };
  ctx.check(tlsd.running(), 'tlsd is still running');
  ctx.check(after.fds <= before.fds + fdSlack, `descriptors return to the baseline (${before.fds}, +${fdSlack} allowed)`, `after: ${after.fds} (${extraDescriptors(tlsd.pid, tracker.beforeKinds)}), peak: ${peak.fds}`);
  if (options.rss !== 'rounds') ctx.check(after.rssMiB <= before.rssMiB + rssSlack, `RSS comes back near the baseline (${before.rssMiB} MiB; V8 keeps some: +${Math.round(rssSlack)} allowed)`, `after: ${after.rssMiB} MiB, peak: ${peak.rssMiB} MiB`);
  ctx.check(after.zombies === 0, 'no zombie children', `${after.zombies} in state Z`);
  ctx.check(after.children === 0, 'no child left once every session ended', `${after.children} children`);
  return after;
}

/** Asks tlsd for its table (SIGUSR1) and returns the peers and handshakes it reports, and its peer lines. */
export async function status(tlsd: SoakTlsd): Promise<{ peers: number; handshakes: number; lines: string[] }> {
  const pattern = /Status: (\d+) peer\(s\), (\d+) handshake\(s\) in progress/g;
  const seen = countMatches(tlsd.stderr(), pattern);
  tlsd.signal('SIGUSR1');
  const deadline = Date.now() + 10_000;
  while (countMatches(tlsd.stderr(), pattern) <= seen) {
    if (Date.now() > deadline || !tlsd.running()) throw new Error(`no Status line after SIGUSR1; log tail:\n${tlsd.stderr().slice(-2000)}`);
    await sleep(20);
  }
  const all = [...tlsd.stderr().matchAll(pattern)];
  const last = all[all.length - 1]!;
  const peers = Number(last[1]);
  await sleep(50); // the peer lines follow the Status line
  const lines = tlsd
    .stderr()
    .slice(last.index! + last[0].length)
    .split('\n')
    .filter((line) => / (SERVER|CLIENT) \S+ /.test(line))
    .slice(0, peers)
    .map((line) => line.replace(/^\S+: /, ''));
  return { peers, handshakes: Number(last[2]), lines };
}

export { eventually } from '../eventually.js';

/** Every process below `root` (children, grandchildren …), from one pass over /proc. */
export function descendants(root: number): number[] {
  const parentOf = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      parentOf.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // exited while we looked
    }
  }
  const below: number[] = [];
  for (const pid of parentOf.keys()) {
    for (let up = parentOf.get(pid); up !== undefined && up > 1; up = parentOf.get(up)) {
      if (up === root) {
        below.push(pid);
        break;
      }
    }
  }
  return below;
}

export function alive(pid: number): boolean {
  const state = (() => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    } catch {
      return undefined;
    }
  })();
  return state !== undefined && state !== 'Z';
}
