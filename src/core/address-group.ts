import { isIPv4, isIPv6 } from 'node:net';

/**
 * What tlsd's per-address limits count as one address: an IPv4 address, or a network of an IPv6
 * one. One IPv6 host is routinely given a whole /64 and picks addresses in it at will (SLAAC,
 * privacy addresses), so counted by address it could pass for 2^64 clients: --max-per-ip counts a
 * /64. Handshake fairness counts a /48 (`ipv6Prefix`): a site, or anyone with a tunnel broker's
 * free /48, holds 65,536 /64s, far more than there are handshake slots, and a 6to4 /48 is one
 * IPv4 address. IPv4 addresses are scarce and often shared (NAT), so each counts alone. An IPv4-mapped address (::ffff:192.0.2.1, as a dual-stack listener on `::` sees IPv4
 * peers) counts as its IPv4 address, not as the one /64 all of IPv4 maps into.
 */
export function addressGroup(address: string, ipv6Prefix: 48 | 64 = 64): string {
  if (isIPv4(address)) return address;
  // A zone (fe80::1%eth0) names our interface, not the peer.
  const bare = address.replace(/%.*$/, '');
  if (!isIPv6(bare)) return address; // no address at all (a socket reset before it was asked): counted under its text
  const hextets = hextetsOf(bare);
  if (hextets.slice(0, 5).every((h) => h === 0) && hextets[5] === 0xffff) {
    return [hextets[6]! >> 8, hextets[6]! & 255, hextets[7]! >> 8, hextets[7]! & 255].join('.');
  }
  // RFC 5952's form: the zero interface part is the longest run of zeros, so `::` stands for it
  // (and for any zeros that end the prefix).
  const prefix = hextets.slice(0, ipv6Prefix / 16);
  while (prefix.length > 0 && prefix.at(-1) === 0) prefix.pop();
  return `${prefix.map((h) => h.toString(16)).join(':')}::/${ipv6Prefix}`;
}

/** The eight 16-bit groups of a valid IPv6 address (`::` expanded, a dotted IPv4 tail converted). */
export function hextetsOf(address: string): number[] {
  let text = address;
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const groups = (part: string | undefined): number[] => (part ? part.split(':').map((h) => parseInt(h, 16)) : []);
  const [head, tail] = text.split('::');
  const before = groups(head);
  const after = groups(tail);
  return [...before, ...new Array<number>(8 - before.length - after.length).fill(0), ...after];
}
