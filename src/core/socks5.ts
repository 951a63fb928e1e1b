import { connect, isIP, type Socket } from 'node:net';
import { reason, socketReason } from '../log/reason.js';
import type { ProxyAddress } from '../input/proxy-url.js';

/** RFC 1928 replies, and Tor's for onion services (its socks-extensions.txt). */
const REPLIES: Record<number, string> = {
  1: 'general SOCKS server failure',
  2: 'connection not allowed by ruleset',
  3: 'network unreachable',
  4: 'host unreachable',
  5: 'connection refused',
  6: 'TTL expired',
  7: 'command not supported',
  8: 'address type not supported',
  0xf0: 'onion service descriptor not found',
  0xf1: 'onion service descriptor invalid',
  0xf2: 'onion service introduction failed',
  0xf3: 'onion service rendezvous failed',
  0xf4: 'onion service needs client authorization',
  0xf5: 'onion service client authorization wrong',
  0xf6: 'invalid onion address',
  0xf7: 'onion service introduction timed out',
};

/**
 * Opens a TCP connection to `host:port` through a SOCKS5 proxy (RFC 1928, no authentication,
 * CONNECT); `host` is an address or a host name in its one form (canonicalHostName). A host
 * name is sent as a name (ATYP 3) and only the proxy resolves it: nothing is looked up here,
 * which is what `.onion` names need and what keeps DNS from leaking around Tor.
 * Resolves with the socket, ready for TLS, once the proxy says it is connected; rejects with a
 * one-line error naming the proxy on any failure, including no success within `timeoutMs`.
 */
export function connectThroughProxy(proxy: ProxyAddress, host: string, port: number, timeoutMs: number): Promise<Socket> {
  const label = `SOCKS5 proxy ${isIP(proxy.host) === 6 ? `[${proxy.host}]` : proxy.host}:${proxy.port}`;
  return new Promise((resolve, reject) => {
    let request: Buffer;
    try {
      request = connectRequest(host, port);
    } catch (error) {
      reject(new Error(`${label}: ${reason(error)}`));
      return;
    }
    // As for a direct dial, the peer's end must not end our side (half-close).
    const socket = connect({ host: proxy.host, port: proxy.port, allowHalfOpen: true });
    let received = Buffer.alloc(0);
    let stage: 'method' | 'reply' = 'method';
    const fail = (why: string): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Error(`${label}: ${why}`));
    };
    const timer = setTimeout(() => fail(`no answer within ${timeoutMs / 1000} s`), timeoutMs);
    const onData = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk]);
      if (stage === 'method') {
        if (received.length < 2) return;
        if (received[0] !== 5) return fail(`not a SOCKS5 proxy (it answered version ${received[0]})`);
        if (received[1] === 0xff) return fail('it requires authentication, which tlsd does not offer');
        if (received[1] !== 0) return fail(`it chose method ${received[1]}, not "no authentication"`);
        received = received.subarray(2);
        stage = 'reply';
        socket.write(request);
      }
      // VER REP RSV ATYP BND.ADDR BND.PORT; the address's length depends on its type.
      if (received.length < 5) return;
      if (received[0] !== 5) return fail(`not a SOCKS5 reply (version ${received[0]})`);
      const code = received[1]!;
      if (code !== 0) return fail(`${REPLIES[code] ?? 'unknown error'} (reply ${code})`);
      const addressLength = { 1: 4, 3: 1 + received[4]!, 4: 16 }[received[3]!];
      if (addressLength === undefined) return fail(`malformed reply (address type ${received[3]})`);
      const length = 4 + addressLength + 2;
      if (received.length < length) return;
      clearTimeout(timer);
      socket.off('data', onData).off('error', onError).off('end', onEnd);
      socket.pause();
      // Anything after the reply is already the peer's (TLS) data.
      if (received.length > length) socket.unshift(received.subarray(length));
      resolve(socket);
    };
    // The proxy's address is in the label already.
    const onError = (error: Error): void => fail(socketReason(error));
    const onEnd = (): void => fail('it closed the connection during the SOCKS5 handshake');
    socket.on('data', onData).once('error', onError).once('end', onEnd);
    // Version 5, one method offered: 0, no authentication.
    socket.once('connect', () => socket.write(Buffer.from([5, 1, 0])));
  });
}

/** CONNECT to an address (ATYP 1 or 4) or a name (ATYP 3, resolved by the proxy). */
function connectRequest(host: string, port: number): Buffer {
  const head = Buffer.from([5, 1, 0]);
  const portBytes = Buffer.from([port >> 8, port & 0xff]);
  const family = isIP(host);
  if (family === 4) return Buffer.concat([head, Buffer.from([1, ...host.split('.').map(Number)]), portBytes]);
  if (family === 6) return Buffer.concat([head, Buffer.from([4]), ipv6Bytes(host), portBytes]);
  const name = Buffer.from(host, 'ascii');
  if (name.length === 0 || name.length > 255) throw new Error(`host name too long for SOCKS5: ${host}`);
  return Buffer.concat([head, Buffer.from([3, name.length]), name, portBytes]);
}

/** The 16 bytes of an IPv6 address (`::` and a trailing dotted IPv4 part allowed). */
export function ipv6Bytes(address: string): Buffer {
  if (address.includes('%')) throw new Error(`a scoped address cannot go through a proxy: ${address}`);
  let text = address;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [left, right] = text.split('::') as [string, string | undefined];
  const groups = (part: string): string[] => (part === '' ? [] : part.split(':'));
  const head = groups(left);
  const tail = right === undefined ? [] : groups(right);
  const all = right === undefined ? head : [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
  const bytes = Buffer.alloc(16);
  all.forEach((group, index) => bytes.writeUInt16BE(parseInt(group, 16), index * 2));
  return bytes;
}
