#!/usr/bin/env node
// A CommonJS bundle (scripts/bundle.mjs); require() skips the export scan an import would make.
import { createRequire } from 'node:module';
createRequire(import.meta.url)('../dist/std2fifo.bundle.cjs');
