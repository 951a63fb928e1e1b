import { constants } from 'node:os';

const signals = constants.signals as Record<string, number>;

/**
 * Accepts a signal as the original did (a number, `-s 15`) or by name (`TERM`, `SIGTERM`, `term`).
 * Returns undefined for anything that is not a signal on this system.
 */
export function parseSignal(text: string): NodeJS.Signals | undefined {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) {
    const number = Number(trimmed);
    const entry = Object.entries(signals).find(([, value]) => value === number);
    return entry?.[0] as NodeJS.Signals | undefined;
  }
  const upper = trimmed.toUpperCase();
  const name = upper.startsWith('SIG') ? upper : `SIG${upper}`;
  return name in signals ? (name as NodeJS.Signals) : undefined;
}

export function signalNumber(name: NodeJS.Signals): number {
  return signals[name] ?? 0;
}
