/**
 * A host name in its one form: lowercased and without the trailing dot, since DNS names compare
 * without case and `example.org.` is `example.org`; one name, one value. This is the form tlsd
 * sends as SNI, checks certificates against, hands a SOCKS5 proxy, writes in TLSA records and gives
 * children (SSL_TLS_SNI_SERVERNAME). Undefined for anything that is not a host name: labels of
 * letters, digits, hyphens (not first or last) and underscores (which service names and many real
 * hosts use), 1 to 63 bytes each, at most 253 bytes in all. ASCII only: a name in another script
 * travels as its punycode form (xn--…), as RFC 6066 asks of a server name.
 */
export function canonicalHostName(name: string): string | undefined {
  const bare = name.endsWith('.') ? name.slice(0, -1) : name;
  // Tested before lowercasing: toLowerCase turns some non-ASCII letters (the Kelvin sign) into ASCII.
  const valid = bare.length <= 253 && /^([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/i.test(bare);
  return valid ? bare.toLowerCase() : undefined;
}
