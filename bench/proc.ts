/** Readings from /proc: a process's own memory and CPU time, and its process group. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** VmRSS of one process in KiB (its own resident memory; children are other processes). */
export function rssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
  return match ? Number(match[1]) : NaN;
}

export interface CpuTimes {
  /** utime + stime of the process itself (all its threads), in milliseconds. */
  own: number;
  /** cutime + cstime: children it has waited for, in milliseconds. */
  children: number;
  /** stime alone (the kernel's work on the process's behalf: its syscalls, loopback TCP, forks), in milliseconds. */
  system: number;
}

function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

export function cpuTimes(pid: number): CpuTimes {
  const fields = statFields(pid); // fields[0] is field 3 (state)
  const ms = 1000 / clockTicks();
  return {
    own: (Number(fields[11]) + Number(fields[12])) * ms,
    children: (Number(fields[13]) + Number(fields[14])) * ms,
    system: Number(fields[12]) * ms,
  };
}

/** Every live process's parent, from one pass over /proc. */
function parents(): Map<number, number> {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      parentOf.set(Number(entry), Number(statFields(Number(entry))[1]));
    } catch {
      // gone meanwhile
    }
  }
  return parentOf;
}

export type Role = 'primary' | 'worker' | 'helper';

/**
 * The server's own processes and what each is: the server (with `--workers N`, tlsd's primary),
 * tlsd's workers (Node processes the primary forked) and each one's spawn helper (a child that
 * starts the sessions' children); their CPU and memory are the daemon's as much as the main
 * process's. The sessions' children (`cat`) are not: they are the helpers' children, never walked.
 */
export function daemonProcesses(pid: number): Map<number, Role> {
  const parentOf = parents();
  const childrenOf = (parent: number): number[] => [...parentOf].filter(([, of]) => of === parent).map(([child]) => child);
  const own = new Map<number, Role>([[pid, 'primary']]);
  for (const child of childrenOf(pid)) {
    try {
      if (isSpawnHelper(child)) own.set(child, 'helper');
      else if (isNode(child)) {
        own.set(child, 'worker');
        for (const grandchild of childrenOf(child)) if (isSpawnHelper(grandchild)) own.set(grandchild, 'helper');
      }
    } catch {
      // gone meanwhile
    }
  }
  return own;
}

/**
 * The rule of isSpawnHelper (test/lib/limits-faults.ts), which the bench, compiled on its own,
 * cannot import: the helper is started with SPAWN_HELPER_ARGUMENTS (src/launch/spawn-helper.ts),
 * `--protocol 2`.
 */
function isSpawnHelper(pid: number): boolean {
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
  return argv[1] === '--protocol' && argv[2] === '2';
}

const nodeBinary = realpathSync(process.execPath);

/** A worker: the primary forks them from the node binary that runs it (the bench's own). */
function isNode(pid: number): boolean {
  return readlinkSync(`/proc/${pid}/exe`) === nodeBinary;
}

/** cpuTimes summed over the daemon's processes (by role, and in all); a process gone meanwhile counts nothing. */
export function daemonCpuTimes(pid: number): CpuTimes & { byRole: Record<Role, number> } {
  const total = { own: 0, children: 0, system: 0, byRole: { primary: 0, worker: 0, helper: 0 } };
  for (const [member, role] of daemonProcesses(pid)) {
    try {
      const times = cpuTimes(member);
      total.own += times.own;
      total.children += times.children;
      total.system += times.system;
      total.byRole[role] += times.own;
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

/** rssKiB summed over the daemon's processes. */
export function daemonRssKiB(pid: number): number {
  let total = 0;
  for (const member of daemonProcesses(pid).keys()) {
    try {
      total += rssKiB(member);
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

/** Live process ids in one process group (the server and every child it started); zombies left out. */
export function groupMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const fields = statFields(Number(entry));
      if (Number(fields[2]) === pgid && fields[0] !== 'Z') members.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return members;
}

/**
 * Proportional set size of a whole process group in KiB (shared pages split among their users),
 * read for at most `budgetMs`; undefined when that was not enough to read them all.
 */
export function groupPssKiB(pgid: number, budgetMs: number): number | undefined {
  const deadline = Date.now() + budgetMs;
  let total = 0;
  for (const pid of groupMembers(pgid)) {
    if (Date.now() > deadline) return undefined;
    try {
      const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      if (match) total += Number(match[1]);
    } catch {
      // gone meanwhile
    }
  }
  return total;
}
