// Build step after tsc: fp2alias and std2fifo, which the examples run once per connection, each
// become one file. Node's ESM loader costs a millisecond or two per module and commander alone is
// a dozen, so a bundle starts about 20 ms sooner (docs/performance.md).
import { build } from 'esbuild';

await build({
  entryPoints: { 'fp2alias.bundle': 'dist/cli/fp2alias.js', 'std2fifo.bundle': 'dist/cli/std2fifo.js' },
  // Next to version.js, so that the '../package.json' it resolves from import.meta.url still works.
  outdir: 'dist',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // The native addon is loaded with require() from node_modules at run time, as before.
  external: ['posix-socket'],
  // commander is CommonJS: its require() calls of Node's built-ins need a real require in ESM.
  banner: { js: "import { createRequire as bundleRequire } from 'node:module'; const require = bundleRequire(import.meta.url);" },
  logLevel: 'warning',
});
