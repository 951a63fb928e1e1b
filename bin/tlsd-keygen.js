#!/usr/bin/env node
import '../dist/cli/tlsd-keygen.js';
