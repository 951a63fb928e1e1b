import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// Files of the installed package, found from this module: it sits at the top of src/ and is bundled
// into the top of dist/, both one level below the package's root.
const fromRoot = (path: string): URL => new URL(`../${path}`, import.meta.url);

/** The package version, read once from package.json. */
export const version: string = (JSON.parse(readFileSync(fromRoot('package.json'), 'utf8')) as { version: string }).version;

/** The spawn helper (src/launch/spawn-helper.c) as node-gyp builds it when tlsd is installed (binding.gyp). */
export const builtSpawnHelper: string = fileURLToPath(fromRoot('build/Release/tlsd-spawn-helper'));
