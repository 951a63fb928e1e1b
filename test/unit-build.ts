// The build's output: each program's file runs in strict mode, as its ES-module source did. A
// banner put ahead of esbuild's "use strict" turns the directive into a mere expression.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { runInNewContext } from 'node:vm';
import t from 'tap';
import { bundle } from './lib/tlsd.js';

for (const name of ['tlsd', 'tlsd-keygen', 'fp2alias', 'std2fifo', 'peer']) {
  t.test(`dist/${name}.cjs runs in strict mode`, async (t) => {
    const source = readFileSync(bundle(name), 'utf8');
    // The file's prologue decides its mode: run it with a probe in place of the rest.
    const prologue = source.slice(0, source.indexOf(';') + 1);
    const context = { require: createRequire(import.meta.url), __filename: bundle(name) };
    t.equal(runInNewContext(`${prologue} (function () { return this === undefined; })()`, context), true, `its first statement is the directive: ${JSON.stringify(prologue)}`);
  });
}
