#!/usr/bin/env node
import '../dist/cli/std2fifo.js';
