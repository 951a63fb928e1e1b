// Build step after tsc: each program becomes one file. Node's ESM loader costs a millisecond or two
// per module and commander alone is a dozen, so one file starts about 20 ms sooner
// (docs/performance.md).
import { build } from 'esbuild';

const common = {
  outdir: 'dist', // next to version.js, so that the '../package.json' it resolves still works
  bundle: true,
  platform: 'node',
  target: 'node20',
  // The native addon is loaded with require() from node_modules at run time, as before.
  external: ['posix-socket'],
  logLevel: 'warning',
};
const entries = (names) => Object.fromEntries(names.map((name) => [`${name}.bundle`, `dist/cli/${name}.js`]));

// tlsd and tlsd-keygen start once: ESM, as tsc wrote them. commander is CommonJS, and its require()
// calls of Node's built-ins need a real require in ESM.
await build({
  ...common,
  entryPoints: entries(['tlsd', 'tlsd-keygen']),
  format: 'esm',
  banner: { js: "import { createRequire as bundleRequire } from 'node:module'; const require = bundleRequire(import.meta.url);" },
});

// fp2alias and std2fifo start once per connection in the examples: CommonJS skips the ESM loader
// and the facade it builds over each built-in (node:fs's touches all its lazy getters, streams
// included), about 10 ms here; whitespace and syntax minified, a few ms less to parse.
await build({
  ...common,
  entryPoints: entries(['fp2alias', 'std2fifo']),
  format: 'cjs',
  outExtension: { '.js': '.cjs' },
  define: { 'import.meta.url': 'bundleUrl' },
  // commander only explains a command line the quick parser leaves to it (src/cli/quick-args.ts):
  // required from node_modules then, it costs the usual run no compiling of its 57 KB.
  external: [...common.external, 'commander'],
  banner: { js: "const bundleUrl = require('node:url').pathToFileURL(__filename).href;" },
  minifyWhitespace: true,
  minifySyntax: true,
});

// Not a program: the rules of fingerprints and alias files, for the examples that ship in the
// package (examples/p2p-im/tlsd-im-client.mjs), so that they read an alias file as tlsd does.
await build({
  ...common,
  stdin: {
    contents: "export { isFingerprint } from './dist/peer/fingerprint.js'; export { parseAliases } from './dist/peer/alias-file.js';",
    resolveDir: '.',
    sourcefile: 'peer.bundle.js',
  },
  outfile: 'dist/peer.bundle.js',
  outdir: undefined,
  format: 'esm',
});
