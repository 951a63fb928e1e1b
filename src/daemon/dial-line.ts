import { isIP } from 'node:net';

export interface DialTarget {
  host: string;
  port: number;
}

export type ParsedLine = { target: DialTarget } | { error: string } | { blank: true };

/**
 * Parses one stdin line, `host port`: a name, an IPv4 or IPv6 address (bare or in brackets) and a
 * port number, separated by blanks. Anything else is an error the caller logs before going on.
 */
export function parseDialLine(line: string): ParsedLine {
  const fields = line.trim().split(/[ \t]+/).filter((field) => field !== '');
  if (fields.length === 0) return { blank: true };
  if (fields.length !== 2) return { error: `expected "host port", got ${fields.length} field${fields.length === 1 ? '' : 's'}` };
  const [rawHost, rawPort] = fields as [string, string];
  const host = rawHost.startsWith('[') && rawHost.endsWith(']') ? rawHost.slice(1, -1) : rawHost;
  if (!isHostName(host) && isIP(host) === 0) return { error: 'invalid host' };
  if (!/^\d{1,5}$/.test(rawPort) || Number(rawPort) < 1 || Number(rawPort) > 65535) {
    return { error: 'invalid port (expected 1 to 65535)' };
  }
  return { target: { host, port: Number(rawPort) } };
}

// RFC 1123 names, plus the trailing dot of a fully qualified one; length-limited as DNS is.
function isHostName(host: string): boolean {
  return host.length <= 253 && /^(?=.)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$/i.test(host);
}
