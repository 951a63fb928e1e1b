import { isIP } from 'node:net';
import { isHostName } from './host-name.js';

export interface DialTarget {
  host: string;
  port: number;
  /** The fingerprint the server must have (a third field); any certificate when absent. */
  pin?: string;
}

export type ParsedLine = { target: DialTarget } | { error: string } | { blank: true };

/**
 * Parses one stdin line, `host port [fingerprint]`: a name, an IPv4 or IPv6 address (bare or in
 * brackets), a port number, and optionally the SHA-256 fingerprint the server's certificate must
 * have, separated by blanks. Anything else is an error the caller logs before going on.
 */
export function parseDialLine(line: string): ParsedLine {
  const fields = line.trim().split(/[ \t]+/).filter((field) => field !== '');
  if (fields.length === 0) return { blank: true };
  if (fields.length < 2 || fields.length > 3) {
    return { error: `expected "host port [fingerprint]", got ${fields.length} field${fields.length === 1 ? '' : 's'}` };
  }
  const [rawHost, rawPort, rawPin] = fields as [string, string, string | undefined];
  const host = rawHost.startsWith('[') && rawHost.endsWith(']') ? rawHost.slice(1, -1) : rawHost;
  if (!isHostName(host) && isIP(host) === 0) return { error: 'invalid host' };
  if (!/^\d{1,5}$/.test(rawPort) || Number(rawPort) < 1 || Number(rawPort) > 65535) {
    return { error: 'invalid port (expected 1 to 65535)' };
  }
  if (rawPin === undefined) return { target: { host, port: Number(rawPort) } };
  const pin = normalizeFingerprint(rawPin);
  if (pin === undefined) return { error: 'invalid fingerprint (expected 64 hex digits, colons allowed)' };
  return { target: { host, port: Number(rawPort), pin } };
}

/**
 * A SHA-256 fingerprint as tlsd prints it (lowercase hex), from that form or from openssl's
 * `AB:CD:…`, optionally prefixed `SHA256:`; undefined when it is neither.
 */
export function normalizeFingerprint(text: string): string | undefined {
  const hex = text.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : undefined;
}
