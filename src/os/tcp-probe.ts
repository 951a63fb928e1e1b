import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import PosixSocket from 'posix-socket';
import { errnoOf } from './errno.js';

// What Node keeps of a TLS socket's TCP connection, outside its typings: the TLS handle's
// `_parent` is the TCP handle (its descriptor), the socket's `_parent` the net.Socket it wraps.
interface TlsInternals {
  _handle?: { _parent?: { fd?: unknown } } | null;
  _parent?: Socket | null;
}

/** The TCP descriptor under a TLS socket; undefined when it runs over something else (a proxy tunnel). */
export function descriptorOf(socket: TLSSocket): number | undefined {
  const fd = (socket as unknown as TlsInternals)._handle?._parent?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** The net.Socket an accepted TLS socket wraps: it still knows the peer's address after a reset. */
export function tcpSocketOf(socket: TLSSocket): Socket | undefined {
  return (socket as unknown as TlsInternals)._parent ?? undefined;
}

const gone = new Set(['EPIPE', 'ECONNRESET', 'ETIMEDOUT', 'ENOTCONN', 'EHOSTUNREACH']);
const empty = new ArrayBuffer(1);

/**
 * Whether the peer has reset (or timed out) a connection Node is not reading from: one that the
 * peer half-closed, or that backpressure paused. Node learns of a reset only by reading or
 * writing, so a zero-byte send asks the kernel; it sends nothing on a live connection.
 */
export function connectionLost(fd: number): string | undefined {
  try {
    PosixSocket.send(fd, empty, 0, PosixSocket.MSG_DONTWAIT | PosixSocket.MSG_NOSIGNAL);
    return undefined;
  } catch (error) {
    const code = errnoOf(error);
    return code !== undefined && gone.has(code) ? code : undefined;
  }
}
