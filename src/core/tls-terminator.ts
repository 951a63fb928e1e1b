import type { Socket } from 'node:net';
import { createServer, type SecureContextOptions, type Server, type TLSSocket } from 'node:tls';
import { tcpSocketOf } from '../os/tcp-probe.js';

export interface HandshakeEvents {
  /** The handshake is done, certificate or not: whoever listens decides. */
  secure(tcp: Socket, socket: TLSSocket): void;
  /** It failed (or timed out); the socket is destroyed right after. */
  failed(tcp: Socket, socket: TLSSocket, error: Error): void;
}

/**
 * Runs the server side of TLS handshakes on TCP connections accepted elsewhere: by the Listener of
 * a single tlsd, or by the primary, which hands a worker the descriptor.
 */
export class TlsTerminator {
  private readonly server: Server;

  constructor(credentials: SecureContextOptions, handshakeTimeoutMs: number, events: HandshakeEvents) {
    this.server = createServer({
      ...credentials,
      requestCert: true,
      // Identity is the fingerprint: self-signed certificates are the norm, no CA is consulted.
      rejectUnauthorized: false,
      handshakeTimeout: handshakeTimeoutMs,
    });
    // Every handshake ends in exactly one of these two events.
    this.server.on('secureConnection', (socket: TLSSocket) => {
      // Half-open only once secure: a peer that ends its side still gets the child's whole reply,
      // while an end during the handshake fails it at once rather than at the deadline.
      socket.allowHalfOpen = true;
      events.secure(tcpSocketOf(socket) ?? socket, socket);
    });
    this.server.on('tlsClientError', (error: Error, socket: TLSSocket) => {
      events.failed(tcpSocketOf(socket) ?? socket, socket, error);
      // Node leaves a failed socket open when this event has a listener: close it, or it leaks.
      socket.destroy();
    });
  }

  /** Starts the handshake on an accepted connection (bytes already read are put back into it first). */
  take(socket: Socket): void {
    this.server.emit('connection', socket);
  }

  /** New credentials for handshakes started from now on. */
  setCredentials(credentials: SecureContextOptions): void {
    this.server.setSecureContext(credentials);
  }
}
