// Build step after tsc: each program becomes one file. Node's ESM loader costs a millisecond or two
// per module and commander alone is a dozen, so fp2alias and std2fifo, which the examples run once
// per connection, start about 20 ms sooner, and tlsd sooner still (docs/performance.md).
import { build } from 'esbuild';

await build({
  entryPoints: Object.fromEntries(['tlsd', 'fp2alias', 'std2fifo', 'tlsd-keygen'].map((name) => [`${name}.bundle`, `dist/cli/${name}.js`])),
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
