import { setTimeout as sleep } from 'node:timers/promises';

/** Polls `condition` every 50 ms for at most `ms`; resolves with whether it came true. */
export async function eventually(condition: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}
