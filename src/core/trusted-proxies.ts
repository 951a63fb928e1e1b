import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { hextetsOf } from './address-group.js';

/**
 * The balancers whose PROXY headers tlsd believes (--accept-proxy): addresses and CIDR ranges,
 * IPv4 and IPv6. A header names any address its sender likes, so only these may send one; and
 * since a connection from one of them is the balancer's, not a client's, they must send one.
 * An IPv4 entry also matches its IPv4-mapped form (::ffff:a.b.c.d, as a listener on `::` sees
 * IPv4 peers), and the other way round.
 */
export class TrustedProxies {
  private readonly list = new BlockList();

  private constructor(readonly entries: readonly string[]) {
    for (const entry of entries) {
      const [address, bits] = entry.split('/') as [string, string | undefined];
      const family = isIPv4(address) ? 'ipv4' : 'ipv6';
      if (bits === undefined) this.list.addAddress(address, family);
      else this.list.addSubnet(address, Number(bits), family);
    }
  }

  /** Parses `10.0.0.5,192.0.2.0/24,2001:db8::/32`; a one-line reason when an entry is not an address or a range. */
  static parse(text: string): TrustedProxies | { error: string } {
    const entries = text.split(',').map((entry) => entry.trim());
    for (const entry of entries) {
      const problem = entryProblem(entry);
      if (problem) return { error: problem };
    }
    return new TrustedProxies(entries);
  }

  /** Both lists together (the option may be given more than once). */
  with(other: TrustedProxies): TrustedProxies {
    return new TrustedProxies([...this.entries, ...other.entries]);
  }

  has(address: string | undefined): boolean {
    if (address === undefined) return false;
    return this.list.check(address, isIPv4(address) ? 'ipv4' : 'ipv6');
  }
}

function entryProblem(entry: string): string | undefined {
  const match = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(entry);
  const address = match?.[1] ?? '';
  const v4 = isIPv4(address);
  // A zone (fe80::1%eth0) names an interface of ours, not a balancer.
  if (!match || !(v4 || (isIPv6(address) && !address.includes('%')))) return `${JSON.stringify(entry)} is not an IP address or an address/prefix range`;
  if (match[2] === undefined) return undefined;
  const bits = Number(match[2]);
  const max = v4 ? 32 : 128;
  if (bits > max) return `${JSON.stringify(entry)}: the prefix length of an ${v4 ? 'IPv4' : 'IPv6'} range is 0 to ${max}`;
  // 10.0.0.10/8 is more likely a typo for one address than a way to write 10.0.0.0/8, and it
  // would trust sixteen million addresses: say so rather than guess.
  if (hasHostBits(address, v4 ? bits + 96 : bits)) return `${JSON.stringify(entry)} has bits set after its first ${bits}: write the range's first address, or the address alone`;
  return undefined;
}

/** Whether `address` has any bit set after the first `prefix` of its 128 (IPv4 as ::ffff:a.b.c.d). */
function hasHostBits(address: string, prefix: number): boolean {
  const hextets = hextetsOf(isIPv4(address) ? `::ffff:${address}` : address);
  return hextets.some((hextet, i) => {
    const kept = Math.max(0, Math.min(16, prefix - 16 * i));
    return (hextet & (0xffff >> kept)) !== 0;
  });
}
