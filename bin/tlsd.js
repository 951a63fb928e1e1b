#!/usr/bin/env node
import '../dist/cli/tlsd.js';
