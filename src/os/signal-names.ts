import { constants } from 'node:os';

const signals = constants.signals as Record<string, number>;
const names = new Map<number, NodeJS.Signals>(Object.entries(signals).map(([name, value]) => [value, name as NodeJS.Signals]));

/**
 * Accepts a signal as the original did (a number, `-s 15`) or by name (`TERM`, `SIGTERM`, `term`).
 * Returns undefined for anything that is not a signal on this system.
 */
export function parseSignal(text: string): NodeJS.Signals | undefined {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) {
    return names.get(Number(trimmed));
  }
  const upper = trimmed.toUpperCase();
  const name = upper.startsWith('SIG') ? upper : `SIG${upper}`;
  return name in signals ? (name as NodeJS.Signals) : undefined;
}

/** A signal's number, for the original's log lines (`Received signal 15`), which scripts may match. */
export function signalNumber(name: NodeJS.Signals): number {
  return signals[name] ?? 0;
}

/** The name of a signal number (as the spawn helper reports a child's), undefined if unknown here. */
export function signalName(number: number): NodeJS.Signals | undefined {
  return names.get(number);
}

/** How a process ended, for tlsd's own log lines about its helper (children use the original's words). */
export function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `killed by signal ${signal}` : `exited with status ${code}`;
}
