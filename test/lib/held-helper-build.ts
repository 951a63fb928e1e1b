import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSync } from 'esbuild';
import { builtSpawnHelper } from '../../src/native-programs.js';

export type HeldUntil = 'stdin-closed' | `file:${string}`;

/**
 * held-spawn-helper.ts made a program in `dir` (compiled by esbuild: the TypeScript loader tap uses
 * takes seconds to start, and tlsd waits for its helper), and the environment that makes tlsd start
 * its children through it, holding back each child's pid report until `until`.
 */
export function heldSpawnHelper(dir: string, until: HeldUntil): NodeJS.ProcessEnv {
  const program = join(dir, 'held-spawn-helper.mjs');
  buildSync({
    entryPoints: [fileURLToPath(new URL('./held-spawn-helper.ts', import.meta.url))],
    outfile: program,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    banner: { js: `#!${process.execPath}` },
    logLevel: 'warning',
  });
  chmodSync(program, 0o755);
  return { TLSD_SPAWNER: program, HELD_REAL_HELPER: builtSpawnHelper, HELD_UNTIL: until };
}
