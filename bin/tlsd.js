#!/usr/bin/env node
import '../dist/tlsd.js';
