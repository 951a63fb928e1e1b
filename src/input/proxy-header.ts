import { isIPv4, isIPv6, SocketAddress } from 'node:net';

/**
 * The PROXY protocol header a layer-4 balancer (HAProxy's `send-proxy`/`send-proxy-v2`, an AWS
 * NLB, Envoy) writes before the client's bytes: who the client is, since the TCP connection tlsd
 * accepts is the balancer's. Version 1 is one text line, version 2 a binary block; both as
 * https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt defines them. Whoever can reach
 * tlsd's port can send one, which is why tlsd reads it only from the addresses the operator
 * trusts (trusted-proxies.ts), and why nothing here trusts a length or a field it has not checked.
 */

export interface Endpoint {
  address: string;
  port: number;
}

/** The client's connection to the balancer, as the header tells it. */
export interface ProxiedEndpoints {
  /** The client. */
  source: Endpoint;
  /** The address and port the client connected to (the balancer's front end). */
  destination: Endpoint;
}

export type HeaderParse =
  /** Not all of it yet: read more (the caller bounds how long and how much). */
  | { incomplete: true }
  | { malformed: string }
  /**
   * The balancer speaking for itself (v2 LOCAL, v1 UNKNOWN): HAProxy's health checks. No client,
   * so nobody to serve: the caller closes it without a word.
   */
  | { local: true; length: number }
  | { proxied: ProxiedEndpoints; version: 1 | 2; length: number };

/** v1: "PROXY TCP6 " and two full IPv6 addresses, two ports, spaces and CRLF: the spec's maximum. */
export const V1_MAX_BYTES = 107;
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
export const V2_SIGNATURE = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');
const V2_FIXED_BYTES = 16;
/**
 * The most v2 address and TLV bytes tlsd reads. Addresses take 12 (IPv4) or 36 (IPv6) bytes; the
 * TLVs balancers add (an NLB's endpoint id, HAProxy's unique id, authority and SSL fields) a few
 * hundred at most. Bounded, so a pending connection costs at most this much, whatever it claims.
 */
export const V2_MAX_BODY_BYTES = 2048;
/** The longest header tlsd accepts, either version. */
export const MAX_HEADER_BYTES = V2_FIXED_BYTES + V2_MAX_BODY_BYTES;

/**
 * Parses what a connection sent so far (from its first byte). `incomplete` until a whole header
 * is there; never reads past its `length`, so the bytes after it (the TLS ClientHello) are the
 * caller's to hand on.
 */
export function parseProxyHeader(bytes: Buffer): HeaderParse {
  if (startsLike(bytes, V1_PREFIX)) return bytes.length < V1_PREFIX.length ? { incomplete: true } : parseV1(bytes);
  if (startsLike(bytes, V2_SIGNATURE)) return bytes.length < V2_FIXED_BYTES ? { incomplete: true } : parseV2(bytes);
  return { malformed: `no PROXY header: ${whatItIs(bytes)}` };
}

/**
 * Whether the first bytes of a connection could be the start of a PROXY header (either version).
 * A TLS client's first byte is 0x16, which starts neither, so one byte is enough to tell.
 */
export function looksLikeProxyHeader(first: Buffer): boolean {
  return first.length > 0 && (startsLike(first, V1_PREFIX) || startsLike(first, V2_SIGNATURE));
}

/** `bytes` and `prefix` agree on as many bytes as both have. */
function startsLike(bytes: Buffer, prefix: Buffer): boolean {
  const n = Math.min(bytes.length, prefix.length);
  return n > 0 && bytes.subarray(0, n).equals(prefix.subarray(0, n));
}

/** A word on what came instead of a header, for the log line. */
function whatItIs(bytes: Buffer): string {
  if (bytes[0] === 0x16) return 'the connection starts with a TLS handshake (is the balancer set to send-proxy-v2?)';
  const shown = [...bytes.subarray(0, 8)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
  return `the connection starts with bytes ${shown}`;
}

function parseV1(bytes: Buffer): HeaderParse {
  const window = bytes.subarray(0, V1_MAX_BYTES);
  const end = window.indexOf('\r\n', 0, 'latin1');
  // Printable ASCII up to the CRLF; a CR may end what came so far, as the first half of it.
  const text = end < 0 ? window : window.subarray(0, end);
  const bad = text.findIndex((b, i) => (b < 0x20 || b > 0x7e) && !(b === 0x0d && end < 0 && i === text.length - 1));
  if (bad >= 0) return { malformed: `PROXY v1 line with byte 0x${text[bad]!.toString(16).padStart(2, '0')} at offset ${bad}` };
  if (end < 0) return bytes.length >= V1_MAX_BYTES ? { malformed: `PROXY v1 line longer than ${V1_MAX_BYTES} bytes` } : { incomplete: true };
  const length = end + 2;
  const line = text.toString('latin1');
  const fields = line.split(' ');
  // "UNKNOWN" may be followed by anything up to the CRLF, which the receiver must ignore.
  if (fields[1] === 'UNKNOWN') return { local: true, length };
  if (fields.length !== 6) return { malformed: `PROXY v1 line with ${fields.length} fields, not 6` };
  const [, family, source, destination, sourcePort, destinationPort] = fields as [string, string, string, string, string, string];
  const valid = family === 'TCP4' ? isIPv4 : family === 'TCP6' ? isStrictIPv6 : undefined;
  if (!valid) return { malformed: `PROXY v1 line with protocol ${quoteField(family)}, not TCP4, TCP6 or UNKNOWN` };
  if (!valid(source) || !valid(destination)) return { malformed: `PROXY v1 ${family} line with an address that is not ${family === 'TCP4' ? 'IPv4' : 'IPv6'}` };
  const ports = [sourcePort, destinationPort].map(portNumber);
  if (ports.some((port) => port === undefined)) return { malformed: 'PROXY v1 line with a port that is not a number from 0 to 65535' };
  const canonical = family === 'TCP4' ? (text: string): string => text : canonicalIPv6;
  return {
    proxied: { source: { address: canonical(source), port: ports[0]! }, destination: { address: canonical(destination), port: ports[1]! } },
    version: 1,
    length,
  };
}

/** IPv6 as the header carries it: no zone (`%eth0`), which names an interface of the balancer. */
function isStrictIPv6(text: string): boolean {
  return !text.includes('%') && isIPv6(text);
}

/** Decimal, no sign, no leading zero, 0 to 65535, as the spec writes ports. */
function portNumber(text: string): number | undefined {
  if (!/^(0|[1-9]\d{0,4})$/.test(text)) return undefined;
  const port = Number(text);
  return port <= 65535 ? port : undefined;
}

function quoteField(text: string): string {
  return JSON.stringify(text.slice(0, 16));
}

const COMMAND_LOCAL = 0x0;
const COMMAND_PROXY = 0x1;
const FAMILY_NAMES = ['UNSPEC', 'INET', 'INET6', 'UNIX'];
const PROTOCOL_NAMES = ['UNSPEC', 'STREAM', 'DGRAM'];
/** Bytes of the address block, by family: INET and INET6 (addresses and ports). */
const ADDRESS_BYTES: Record<number, number> = { 1: 12, 2: 36 };

function parseV2(bytes: Buffer): HeaderParse {
  if (!bytes.subarray(0, V2_SIGNATURE.length).equals(V2_SIGNATURE)) return { malformed: 'no PROXY header: a broken v2 signature' };
  const versionCommand = bytes[12]!;
  const familyProtocol = bytes[13]!;
  const bodyLength = bytes.readUInt16BE(14);
  const version = versionCommand >> 4;
  const command = versionCommand & 0xf;
  if (version !== 2) return { malformed: `PROXY v2 header with version ${version}` };
  if (command !== COMMAND_LOCAL && command !== COMMAND_PROXY) return { malformed: `PROXY v2 header with command ${command}, neither LOCAL nor PROXY` };
  if (bodyLength > V2_MAX_BODY_BYTES) return { malformed: `PROXY v2 header of ${V2_FIXED_BYTES + bodyLength} bytes, more than the ${MAX_HEADER_BYTES} tlsd reads` };
  const length = V2_FIXED_BYTES + bodyLength;
  if (bytes.length < length) return { incomplete: true };
  // LOCAL: the balancer's own connection; the spec says to ignore the family and the addresses.
  if (command === COMMAND_LOCAL) return { local: true, length };
  const family = familyProtocol >> 4;
  const protocol = familyProtocol & 0xf;
  const addressBytes = ADDRESS_BYTES[family];
  if (addressBytes === undefined || protocol !== 1) {
    const name = `${FAMILY_NAMES[family] ?? `family ${family}`}/${PROTOCOL_NAMES[protocol] ?? `protocol ${protocol}`}`;
    return { malformed: `PROXY v2 header for a ${name} client: tlsd serves TCP clients (INET or INET6, STREAM) only` };
  }
  if (bodyLength < addressBytes) return { malformed: `PROXY v2 ${FAMILY_NAMES[family]} header with ${bodyLength} address bytes, fewer than ${addressBytes}` };
  const body = bytes.subarray(V2_FIXED_BYTES, length);
  const tlvProblem = checkTlvs(body.subarray(addressBytes));
  if (tlvProblem) return { malformed: `PROXY v2 header with ${tlvProblem}` };
  const ipBytes = family === 1 ? 4 : 16;
  const address = (offset: number): string => (family === 1 ? ipv4Text(body.subarray(offset, offset + 4)) : ipv6Text(body.subarray(offset, offset + 16)));
  return {
    proxied: {
      source: { address: address(0), port: body.readUInt16BE(2 * ipBytes) },
      destination: { address: address(ipBytes), port: body.readUInt16BE(2 * ipBytes + 2) },
    },
    version: 2,
    length,
  };
}

/**
 * The TLVs after the addresses: type (1 byte), length (2), value. None is of use to tlsd (TLS is
 * end to end here, so it knows the server name and the cipher itself); each is checked to lie
 * within the header, as a header that breaks its own framing is not to be believed in the rest.
 */
function checkTlvs(tlvs: Buffer): string | undefined {
  let offset = 0;
  while (offset < tlvs.length) {
    if (tlvs.length - offset < 3) return `a truncated TLV at offset ${offset} of the TLVs`;
    const valueLength = tlvs.readUInt16BE(offset + 1);
    if (offset + 3 + valueLength > tlvs.length) return `a TLV (type 0x${tlvs[offset]!.toString(16).padStart(2, '0')}) of ${valueLength} bytes that runs past the header`;
    offset += 3 + valueLength;
  }
  return undefined;
}

function ipv4Text(bytes: Buffer): string {
  return [...bytes].join('.');
}

/** In the form Node gives socket addresses (inet_ntop's: lowercase, `::`, `::ffff:a.b.c.d`), so each address has one spelling. */
function ipv6Text(bytes: Buffer): string {
  return canonicalIPv6(Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(2 * i).toString(16)).join(':'));
}

function canonicalIPv6(text: string): string {
  return new SocketAddress({ address: text, family: 'ipv6' }).address;
}
