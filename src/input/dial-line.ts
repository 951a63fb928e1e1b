import { isIP } from 'node:net';
import { normalizeFingerprint } from '../peer/fingerprint.js';
import { canonicalHostName } from './host-name.js';
import type { InputLine } from './line-reader.js';

export interface DialTarget {
  /**
   * As written, for the name look-up: `host.` stays fully qualified, so the resolver's search
   * domains are not tried. Logs show it too.
   */
  host: string;
  /** The host name in its one form (canonicalHostName); undefined when host is an address. */
  name?: string;
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
  const fields = fieldsOf(line);
  if (fields.length === 0) return { blank: true };
  if (fields.length < 2 || fields.length > 3) {
    return { error: `expected "host port [fingerprint]", got ${fields.length} field${fields.length === 1 ? '' : 's'}` };
  }
  const [rawHost, rawPort, rawPin] = fields as [string, string, string | undefined];
  const written = rawHost.startsWith('[') && rawHost.endsWith(']') ? rawHost.slice(1, -1) : rawHost;
  const canonical = isIP(written) !== 0 ? undefined : canonicalHostName(written);
  // `1.2.3.4.` is an address written as a name: dialed as the address, and like any address sent
  // no SNI (RFC 6066 names only host names there).
  const writtenAddress = canonical !== undefined && isIP(canonical) !== 0;
  const host = writtenAddress ? canonical : written;
  const name = writtenAddress ? undefined : canonical;
  if (isIP(host) === 0 && name === undefined) return { error: 'invalid host' };
  if (!/^\d{1,5}$/.test(rawPort) || Number(rawPort) < 1 || Number(rawPort) > 65535) {
    return { error: 'invalid port (expected 1 to 65535)' };
  }
  const target: DialTarget = { host, ...(name === undefined ? {} : { name }), port: Number(rawPort) };
  if (rawPin === undefined) return { target };
  const pin = normalizeFingerprint(rawPin);
  if (pin === undefined) return { error: 'invalid fingerprint (expected 64 hex digits, colons allowed)' };
  return { target: { ...target, pin } };
}

/**
 * Stdin lines as dial lines, with the one liberty the original's input allowed that matters: it read
 * whitespace-separated words two at a time (scanf), so a host alone on its line took its port from
 * the next one; its own test sends `localhost`, two empty lines, then the port. Here a line that is
 * one word, not a number, waits for the next line that is not blank: if that starts with a port,
 * the two are read as one line; if not, each is read on its own. Nothing else spans lines.
 */
export async function* joinSplitTargets(lines: AsyncIterable<InputLine>): AsyncGenerator<InputLine> {
  let host: string | undefined;
  for await (const item of lines) {
    if ('line' in item && fieldsOf(item.line).length === 0) {
      if (host === undefined) yield item;
      continue;
    }
    if (host !== undefined) {
      const held = host;
      host = undefined;
      if ('line' in item && /^\d+$/.test(fieldsOf(item.line)[0]!)) {
        yield { line: `${held} ${item.line.trim()}` };
        continue;
      }
      yield { line: held };
    }
    const words = 'line' in item ? fieldsOf(item.line) : [];
    if (words.length === 1 && !/^\d+$/.test(words[0]!)) host = words[0];
    else yield item;
  }
  if (host !== undefined) yield { line: host };
}

function fieldsOf(line: string): string[] {
  return line.trim().split(/[ \t]+/).filter((field) => field !== '');
}
