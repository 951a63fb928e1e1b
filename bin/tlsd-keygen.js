#!/usr/bin/env node
// The program is one CommonJS file (scripts/bundle.mjs); require() skips the export scan an import makes.
import { createRequire } from 'node:module';
createRequire(import.meta.url)('../dist/tlsd-keygen.cjs');
