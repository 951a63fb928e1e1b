/**
 * Summarizes a V8 .cpuprofile (from `node --cpu-prof`): the functions with the most self time and
 * the most inclusive time, in ms and as a share of the busy (non-idle) time; optionally per
 * connection. Usage: node bench/out/cpuprofile.js FILE.cpuprofile [connections] [top]
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface Entry {
  name: string;
  ms: number;
  share: number;
}

export interface ProfileSummary {
  busyMs: number;
  idleMs: number;
  self: Entry[];
  inclusive: Entry[];
}

function label(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  const name = functionName || '(anonymous)';
  if (!url) return name;
  const file = url.replace(/^file:\/\//, '').replace(/^.*\/(node_modules|dist|src|lib)\//, '$1/');
  return `${name} ${file}:${lineNumber + 1}`;
}

export function summarize(profile: Profile, top = 25): ProfileSummary {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let idle = 0;
  let busy = 0;
  profile.samples.forEach((id, index) => {
    // timeDeltas[i] is the time before sample i; the sample's own duration is the next delta.
    const us = profile.timeDeltas[index + 1] ?? 0;
    const node = byId.get(id)!;
    const name = label(node);
    if (name === '(idle)') {
      idle += us;
      return;
    }
    busy += us;
    self.set(name, (self.get(name) ?? 0) + us);
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const key = label(byId.get(at)!);
      if (key === '(root)' || seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + us);
    }
  });
  const rank = (map: Map<string, number>): Entry[] =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, ms: us / 1000, share: us / busy }));
  return { busyMs: busy / 1000, idleMs: idle / 1000, self: rank(self), inclusive: rank(inclusive) };
}

/**
 * The summary as text. Per connection: the sampled time divided by `connections`; or, given
 * `cpuPerConnectionMs` (the process's own CPU time per connection from /proc), each entry's share
 * of the busy samples times that (the profiler's sample intervals are wall time, which a busy
 * machine stretches; /proc counts CPU time only).
 */
export function formatSummary(summary: ProfileSummary, connections?: number, cpuPerConnectionMs?: number, top = summary.self.length): string {
  const scaled = cpuPerConnectionMs !== undefined && Number.isFinite(cpuPerConnectionMs);
  const perUs = (entry: { ms: number; share: number }): number | undefined =>
    scaled ? entry.share * cpuPerConnectionMs! * 1000 : connections ? (entry.ms / connections) * 1000 : undefined;
  const per = (entry: { ms: number; share: number }): string => {
    const us = perUs(entry);
    return us === undefined ? '' : `${us.toFixed(0).padStart(6)} µs/conn`;
  };
  const lines = [
    `busy ${summary.busyMs.toFixed(0)} ms, idle ${summary.idleMs.toFixed(0)} ms of samples` +
      (scaled
        ? `; own CPU time (/proc) over the run ${cpuPerConnectionMs!.toFixed(2)} ms per connection: µs/conn below is each entry's share of the busy samples times that`
        : connections
          ? `, ${connections} connections: ${(summary.busyMs / connections).toFixed(2)} ms of busy samples per connection`
          : ''),
  ];
  for (const [title, entries] of [
    ['self time', summary.self],
    ['inclusive time', summary.inclusive],
  ] as const) {
    lines.push('', `top ${title}:`);
    for (const entry of entries.slice(0, top)) lines.push(`${(entry.share * 100).toFixed(1).padStart(5)}%  ${entry.ms.toFixed(0).padStart(6)} ms ${per(entry)}  ${entry.name}`);
  }
  return lines.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [file, connections, top] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node bench/out/cpuprofile.js FILE.cpuprofile [connections] [top]');
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  console.log(formatSummary(summarize(profile, top ? Number(top) : 25), connections ? Number(connections) : undefined));
}
