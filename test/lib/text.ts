import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** `KEY=value` lines (`env` output, an sd_notify datagram) as a map; other lines are skipped. */
export function keyValues(text: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of text.split('\n')) {
    const equals = line.indexOf('=');
    if (equals > 0) map.set(line.slice(0, equals), line.slice(equals + 1));
  }
  return map;
}

/** Polls for a file a child writes, complete once it ends in a newline; bounded. */
export async function fileAppears(path: string, ms = 10_000): Promise<string> {
  for (let waited = 0; waited < ms; waited += 50) {
    if (existsSync(path)) {
      const text = readFileSync(path, 'utf8');
      if (text.endsWith('\n')) return text;
    }
    await sleep(50);
  }
  throw new Error(`${path} did not appear within ${ms} ms`);
}
