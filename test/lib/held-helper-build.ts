import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { builtSpawnHelper } from '../../src/package-files.js';

export type HeldUntil = 'child-exited' | `file:${string}`;

/**
 * The environment that makes tlsd start its children through held-spawn-helper.py (a launcher for
 * it in `dir`), which holds back each child's `started` report until `until`.
 */
export function heldSpawnHelper(dir: string, until: HeldUntil): NodeJS.ProcessEnv {
  const program = join(dir, 'held-spawn-helper');
  const script = fileURLToPath(new URL('./held-spawn-helper.py', import.meta.url));
  writeFileSync(program, `#!/bin/sh\nexec /usr/bin/python3 ${JSON.stringify(script)} "$@"\n`, { mode: 0o755 });
  return { TLSD_SPAWNER: program, HELD_REAL_HELPER: builtSpawnHelper, HELD_UNTIL: until };
}
