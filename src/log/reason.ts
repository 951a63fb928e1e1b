import { getSystemErrorMap } from 'node:util';

/**
 * One short line for an error, for logs and start-up failures: the system's message with the
 * errno code (`no such file or directory (ENOENT)`), never a stack trace.
 */
export function reason(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as NodeJS.ErrnoException).code;
  const message = error.message
    .replace(/^[A-Z0-9_]+: /, '') // "ENOENT: no such file..." → "no such file..."
    // The path is in our own text. Anchored at the end, so a second pass over our own line keeps
    // the "(EISDIR)" the first one added.
    .replace(/, (\w+ '.*'|open|read|write|connect|spawn|scandir|mkdir|stat|lstat)$/, '')
    .replace(/^error:[0-9A-F]+:[^:]*:[^:]*:/, ''); // OpenSSL's "error:0480006C:PEM routines::" prefix
  return code && !message.includes(code) ? `${message} (${code})` : message;
}

/**
 * The system's words for a socket's errno, `connection refused (ECONNREFUSED)`, where our own line
 * names the address already; Node's `connect ECONNREFUSED 127.0.0.1:1080` would say it twice.
 */
export function socketReason(error: NodeJS.ErrnoException): string {
  const known = typeof error.errno === 'number' ? getSystemErrorMap().get(error.errno) : undefined;
  return known ? `${known[1]} (${error.code ?? known[0]})` : reason(error);
}
