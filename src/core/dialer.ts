import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { connect, type ConnectionOptions, type SecureContext, type TLSSocket } from 'node:tls';
import type { DialTarget } from '../input/dial-line.js';
import type { ProxyAddress } from '../input/proxy-url.js';
import { connectThroughProxy } from './socks5.js';
import { tuneTcp } from './tcp-tuning.js';

/**
 * Opens a TLS connection presenting our certificate. Resolves once the handshake is done; rejects
 * on any failure, including no handshake within `timeoutMs` (name look-up and TCP connect count).
 * With a proxy, the SOCKS5 proxy resolves the name and connects, within the same `timeoutMs`.
 */
export async function dial(target: DialTarget, context: SecureContext, timeoutMs: number, proxy?: ProxyAddress): Promise<TLSSocket> {
  if (!proxy) return handshake(target, context, timeoutMs);
  const started = Date.now();
  const tunnel = await connectThroughProxy(proxy, target.name ?? target.host, target.port, timeoutMs);
  tuneTcp(tunnel);
  return handshake(target, context, timeoutMs, { tunnel: new HalfCloseByTls(tunnel), elapsedMs: Date.now() - started });
}

function handshake(target: DialTarget, context: SecureContext, timeoutMs: number, proxied?: { tunnel: Duplex; elapsedMs: number }): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // allowHalfOpen is honoured by tls.connect (a peer that ends its side still gets our reply),
    // but @types/node does not list it.
    const options: ConnectionOptions & { allowHalfOpen: boolean } = {
      ...(proxied ? { socket: proxied.tunnel } : { host: target.host, port: target.port }),
      secureContext: context,
      // Self-signed servers are the norm; checkPeer decides after the handshake and logs why.
      rejectUnauthorized: false,
      // SNI is for names only; RFC 6066 forbids sending an address.
      ...(target.name === undefined ? {} : { servername: target.name }),
      allowHalfOpen: true,
    };
    const socket = connect(options);
    if (!proxied) tuneTcp(socket);
    const timer = setTimeout(() => socket.destroy(new Error(`no TLS handshake within ${timeoutMs / 1000} s`)), Math.max(1, timeoutMs - (proxied?.elapsedMs ?? 0)));
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

/**
 * The proxied TCP connection, for TLS to run over, with one change: when our side ends, only TLS
 * says so (close_notify) and the TCP FIN waits until the peer has ended too. Proxies that close
 * both ways at the first FIN (Tor, microsocks) would otherwise cut off the peer's reply; the
 * close_notify alone ends the peer's input, as a FIN does on a direct connection.
 */
class HalfCloseByTls extends Duplex {
  private peerEnded = false;
  private finishPending = false;

  constructor(private readonly socket: Socket) {
    super({ allowHalfOpen: true });
    socket.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => {
      this.peerEnded = true;
      this.push(null);
      if (this.finishPending) socket.end();
    });
    socket.on('error', (error) => this.destroy(error));
    // After the peer's end, what is still buffered here must be read first; autoDestroy follows.
    socket.on('close', () => {
      if (!this.peerEnded) this.destroy();
    });
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.socket.write(chunk, encoding, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.peerEnded) this.socket.end();
    else this.finishPending = true;
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.socket.destroy();
    callback(error);
  }
}
