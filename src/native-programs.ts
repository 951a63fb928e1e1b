import { fileURLToPath } from 'node:url';

/**
 * The spawn helper (src/native/spawn-helper.c) as node-gyp builds it when tlsd is installed
 * (binding.gyp); this module sits at the top of src/ and of dist/ alike, next to build/'s parent.
 */
export const builtSpawnHelper: string = fileURLToPath(new URL('../build/Release/tlsd-spawn-helper', import.meta.url));
