#!/usr/bin/env node
import '../dist/cli/fp2alias.js';
