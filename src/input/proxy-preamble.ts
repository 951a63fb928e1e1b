import type { Socket } from 'node:net';
import { reason } from '../log/reason.js';
import { looksLikeProxyHeader, parseProxyHeader, type ProxiedEndpoints } from './proxy-header.js';

/** What came before the TLS handshake on a connection, with --accept-proxy. */
export type Preamble =
  /** A connection from elsewhere that starts as TLS should: the TLS server takes it from here. */
  | { direct: true }
  /** The balancer's own connection (a health check): nobody to serve. */
  | { local: true }
  /** A balanced client, named by the header; the TLS server takes the rest of the bytes. */
  | { proxied: ProxiedEndpoints; version: 1 | 2 }
  /** Refused, for this reason (one log line). */
  | { refused: string }
  /** Closed (or failed) by the other side before this was read: what happened, for the log. */
  | { gone: string };

/**
 * Reads what precedes TLS on an accepted connection. From a trusted balancer (`fromBalancer`),
 * that is a PROXY header, which is required; from anyone else, the first bytes must not be one.
 * It reads no further than the header: whatever follows it in the same segment (the ClientHello)
 * is put back into the socket, where the TLS server finds it. `done` is called once, with the
 * socket paused and this reader detached; the caller bounds the time (the handshake deadline) and
 * ends the connection unless it is handed on.
 */
export function readPreamble(socket: Socket, fromBalancer: boolean, done: (preamble: Preamble) => void): void {
  let received: Buffer = Buffer.alloc(0);
  const finish = (preamble: Preamble, rest?: Buffer): void => {
    socket.off('data', onData);
    socket.off('end', onEnd);
    socket.off('error', onError);
    socket.off('close', onClose);
    socket.pause();
    if (rest && rest.length > 0) socket.unshift(rest);
    done(preamble);
  };
  const onData = (chunk: Buffer): void => {
    received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
    if (!fromBalancer) {
      if (looksLikeProxyHeader(received)) finish({ refused: 'a PROXY header from an address not in --accept-proxy' });
      else finish({ direct: true }, received);
      return;
    }
    const parsed = parseProxyHeader(received);
    if ('incomplete' in parsed) return;
    if ('malformed' in parsed) finish({ refused: parsed.malformed });
    else if ('local' in parsed) finish({ local: true });
    else finish({ proxied: parsed.proxied, version: parsed.version }, received.subarray(parsed.length));
  };
  const ended = (how: string): Preamble => ({
    gone: fromBalancer ? `${how} after ${received.length} byte(s), before a whole PROXY header` : `${how} before the TLS handshake began`,
  });
  const onEnd = (): void => finish(ended('closed'));
  const onError = (error: Error): void => finish(ended(`connection error (${reason(error)})`));
  // Destroyed without an end or an error: evicted, or past its deadline. The caller knows.
  const onClose = (): void => finish(ended('closed'));
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('error', onError);
  socket.on('close', onClose);
  // Accepted paused (with workers, so that what is not read here stays in the kernel for the
  // worker), a socket does not start flowing when a 'data' listener is added.
  socket.resume();
}
