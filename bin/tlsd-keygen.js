#!/usr/bin/env node
import '../dist/tlsd-keygen.bundle.js';
