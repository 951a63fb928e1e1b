import { connect as netConnect, isIPv4, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { readFileSync } from 'node:fs';
import { ipv6Bytes } from '../../src/core/socks5.js';
import type { TestIdentity } from './identity.js';
import type { Teardown } from './tlsd.js';

// PROXY protocol headers as a balancer writes them, built here from the specification
// (proxy-protocol.txt), not with tlsd's parser (IPv6 addresses to bytes as tlsd's SOCKS client writes them).

const SIGNATURE = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');

/** HAProxy's health check with send-proxy-v2: version 2, LOCAL, UNSPEC, no body. */
export const V2_LOCAL = Buffer.concat([SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);

export interface V2Options {
  /** 0 LOCAL, 1 PROXY (default). */
  command?: number;
  /** The family/protocol byte; by default INET or INET6 over STREAM, from the source address. */
  family?: number;
  source?: [string, number];
  destination?: [string, number];
  tlvs?: Array<[type: number, value: Buffer]>;
  /** Bytes after the TLVs, counted in the length (a broken TLV). */
  trailing?: Buffer;
  /** The whole body instead of addresses and TLVs. */
  raw?: Buffer;
}

export function proxyV2(options: V2Options): Buffer {
  const { source, destination } = options;
  const six = source !== undefined && !isIPv4(source[0]);
  let body: Buffer;
  if (options.raw) body = options.raw;
  else {
    const address = (text: string): Buffer => (six ? ipv6Bytes(text) : Buffer.from(text.split('.').map(Number)));
    const ports = Buffer.alloc(4);
    ports.writeUInt16BE(source![1], 0);
    ports.writeUInt16BE(destination![1], 2);
    const tlvs = (options.tlvs ?? []).map(([type, value]) => {
      const head = Buffer.from([type, 0, 0]);
      head.writeUInt16BE(value.length, 1);
      return Buffer.concat([head, value]);
    });
    body = Buffer.concat([address(source![0]), address(destination![0]), ports, ...tlvs, options.trailing ?? Buffer.alloc(0)]);
  }
  const fixed = Buffer.from([0x20 | (options.command ?? 1), options.family ?? (six ? 0x21 : 0x11), 0, 0]);
  fixed.writeUInt16BE(body.length, 2);
  return Buffer.concat([SIGNATURE, fixed, body]);
}

/** A v1 line for a TCP client. */
export function proxyV1(source: [string, number], destination: [string, number]): Buffer {
  const family = isIPv4(source[0]) ? 'TCP4' : 'TCP6';
  return Buffer.from(`PROXY ${family} ${source[0]} ${destination[0]} ${source[1]} ${destination[1]}\r\n`, 'latin1');
}

export interface ProxiedClientOptions {
  /** The balancer's address: the TCP connection comes from there. */
  from: string;
  header: Buffer;
  /** Sent as a separate write before TLS starts (true), or in the same write as the ClientHello. */
  separately?: boolean;
  identity?: TestIdentity;
  ms?: number;
}

/**
 * A TLS client behind a pretend balancer: a TCP connection from `from` that sends `header`, then
 * a TLS handshake over the same connection, as HAProxy does with send-proxy-v2.
 */
export async function proxiedTls(t: Teardown, port: number, options: ProxiedClientOptions): Promise<TLSSocket> {
  const raw: Socket = netConnect({ host: '127.0.0.1', port, localAddress: options.from });
  t.teardown(() => void raw.destroy());
  raw.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    raw.once('connect', resolve);
    raw.once('error', reject);
  });
  let pending: Buffer | undefined = options.header;
  if (options.separately) {
    raw.write(pending);
    pending = undefined;
  }
  // A stream in between, so that the header and the ClientHello can leave in one write.
  const stream = new Duplex({
    read: () => void raw.resume(),
    write(chunk: Buffer, _encoding, callback) {
      const bytes = pending ? Buffer.concat([pending, chunk]) : chunk;
      pending = undefined;
      raw.write(bytes, callback);
    },
    final(callback) {
      raw.end();
      callback();
    },
    destroy(error, callback) {
      raw.destroy();
      callback(error);
    },
  });
  raw.on('data', (chunk: Buffer) => {
    if (!stream.push(chunk)) raw.pause();
  });
  raw.on('end', () => stream.push(null));
  raw.on('close', () => stream.destroy());
  const identity = options.identity;
  const socket = tlsConnect({
    socket: stream,
    rejectUnauthorized: false,
    allowHalfOpen: true,
    ...(identity ? { key: readFileSync(identity.key), cert: readFileSync(identity.cert) } : {}),
  } as ConnectionOptions);
  t.teardown(() => void socket.destroy());
  const ms = options.ms ?? 15_000;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no TLS handshake within ${ms} ms`)), ms);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once('close', () => {
      clearTimeout(timer);
      reject(new Error('closed before the TLS handshake completed'));
    });
  });
  return socket;
}
