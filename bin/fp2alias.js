#!/usr/bin/env node
import '../dist/fp2alias.bundle.js';
