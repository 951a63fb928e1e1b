import { isIP } from 'node:net';
import { connect, type ConnectionOptions, type SecureContext, type TLSSocket } from 'node:tls';
import type { DialTarget } from './dial-line.js';

/**
 * Opens a TLS connection presenting our certificate. Resolves once the handshake is done; rejects
 * on any failure, including no handshake within `timeoutMs` (name look-up and TCP connect count).
 */
export function dial(target: DialTarget, context: SecureContext, timeoutMs: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // allowHalfOpen is honoured by tls.connect (a peer that ends its side still gets our reply),
    // but @types/node does not list it.
    const options: ConnectionOptions & { allowHalfOpen: boolean } = {
      host: target.host,
      port: target.port,
      secureContext: context,
      // Self-signed servers are the norm; checkPeer decides after the handshake and logs why.
      rejectUnauthorized: false,
      // SNI is for names only; RFC 6066 forbids sending an address.
      ...(isIP(target.host) === 0 ? { servername: target.host.replace(/\.$/, '') } : {}),
      allowHalfOpen: true,
    };
    const socket = connect(options);
    socket.setNoDelay(true);
    const timer = setTimeout(() => socket.destroy(new Error(`no TLS handshake within ${timeoutMs / 1000} s`)), timeoutMs);
    const fail = (error: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(error);
    };
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('error', fail);
      resolve(socket);
    });
  });
}
