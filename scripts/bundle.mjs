// The build's one compile: each program, from its TypeScript, becomes one CommonJS file in dist/,
// which bin/ launches. tsc only type-checks (npm run typecheck). Why one file per program, and why
// CommonJS for all four: docs/performance.md, "Start-up".
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

// Every path below is the package's, wherever this is run from (rmSync must not empty another dist/).
const root = fileURLToPath(new URL('..', import.meta.url));

const programs = ['tlsd', 'tlsd-keygen', 'fp2alias', 'std2fifo'];

rmSync(`${root}dist`, { recursive: true, force: true }); // nothing but this build's files goes into the package
const common = {
  absWorkingDir: root,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  outExtension: { '.js': '.cjs' },
  target: 'node20',
  // src/ is ES modules; import.meta.url, the one thing of ESM it uses, is the bundle's file URL.
  define: { 'import.meta.url': 'bundleUrl' },
  // "use strict" first: after the banner's statement, esbuild's own directive would be a mere
  // expression, and src/ (ES modules, always strict) would run sloppy.
  banner: { js: "'use strict';const bundleUrl = require('node:url').pathToFileURL(__filename).href;" },
  // Less to parse at each start; names are kept, so stack traces still read.
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
};
await build({
  ...common,
  entryPoints: Object.fromEntries(programs.map((name) => [name, `src/cli/${name}.ts`])),
  // One level below the package's root, as src/ is: src/package-files.ts finds package.json and
  // the built spawn helper from there.
  outdir: 'dist',
  // The native addon is loaded with require() from node_modules at run time.
  external: ['posix-socket'],
});

// Not a program: the rules of fingerprints and alias files, for the examples that ship in the
// package (examples/p2p-im/tlsd-im-client.mjs), so that they read an alias file as tlsd does.
await build({
  ...common,
  stdin: {
    contents: "export { isFingerprint } from './src/peer/fingerprint.ts'; export { parseAliases } from './src/peer/alias-file.ts';",
    resolveDir: root,
    sourcefile: 'peer.ts',
    loader: 'ts',
  },
  outfile: 'dist/peer.cjs',
});
