#!/usr/bin/env node
import '../dist/std2fifo.bundle.js';
