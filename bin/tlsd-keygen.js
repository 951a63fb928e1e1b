#!/usr/bin/env node
import '../dist/tlsd-keygen.js';
