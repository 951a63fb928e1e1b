import { debuglog, type DebugLoggerFunction } from 'node:util';

/**
 * NODE_DEBUG=tlsd: one line per event of a connection's life, on stderr (`TLSD <pid>: …`), as
 * Node's own net and tls modules trace theirs. The first call swaps in Node's real function, a
 * no-op when the section is off, so a disabled trace costs a call and no formatting: pass the
 * parts as arguments (`trace('%s: accept', label)`).
 */
const section = debuglog('tlsd', (fn) => {
  trace = fn;
});
export let trace: DebugLoggerFunction = section;

/**
 * Whether the trace is on, to test before working out a line's parts. Read once: Node reads
 * NODE_DEBUG at start-up, and the function swapped in above has no `enabled` of its own.
 */
export const tracing: boolean = section.enabled;
