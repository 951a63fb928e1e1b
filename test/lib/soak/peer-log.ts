import type { Socket } from 'node:net';
import { eventually } from './daemon.js';

/**
 * tlsd names each connection in its log by the peer's address, `127.0.0.1:PORT`: for a client of
 * ours that is its own local port. These look up what tlsd said about one connection.
 */

/** How tlsd names the connection of a client socket of ours. */
export function labelOf(socket: Socket): string {
  return `127.0.0.1:${socket.localPort}`;
}

/** tlsd's lines about one connection, without the ident (`tlsd: `). */
export function linesOf(log: string, label: string): string[] {
  const prefix = `${label}: `;
  return log
    .split('\n')
    .map((line) => line.replace(/^\S+: /, ''))
    .filter((line) => line.startsWith(prefix));
}

/** Whether tlsd logged a line about that connection matching `pattern` (after `label: `). */
export function saidOf(log: string, label: string, pattern: RegExp | string): boolean {
  const prefix = `${label}: `.length;
  return linesOf(log, label).some((line) => (typeof pattern === 'string' ? line.startsWith(pattern, prefix) : pattern.test(line.slice(prefix))));
}

/** The pid of the child tlsd started for that connection, from its `started child` line. */
export function childOf(log: string, label: string): number | undefined {
  for (const line of linesOf(log, label)) {
    const pid = /: started child (\d+)$/.exec(line)?.[1];
    if (pid) return Number(pid);
  }
  return undefined;
}

export const sessionEnded = (log: string, label: string): boolean => saidOf(log, label, 'session ended');

/** Waits at most `ms` for every connection's `session ended` line; returns those still without one. */
export async function awaitEnded(log: () => string, labels: string[], ms: number): Promise<string[]> {
  const missing = (): string[] => labels.filter((label) => !sessionEnded(log(), label));
  await eventually(() => missing().length === 0, ms);
  return missing();
}

/** What tlsd said about a connection, on one line, for a check's details. */
export function story(log: string, label: string): string {
  return linesOf(log, label).join(' / ');
}
