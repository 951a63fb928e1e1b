#!/usr/bin/env node
import '../dist/tlsd.bundle.js';
