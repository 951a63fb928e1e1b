/**
 * A DNS host name: labels of letters, digits, hyphens (not first or last) and underscores (which
 * service names and many real hosts use), 1 to 63 bytes each, at most 253 bytes in all, plus the
 * trailing dot of a fully qualified name. ASCII only: a name in another script travels as its
 * punycode form (xn--…), as RFC 6066 asks of a server name.
 */
export function isHostName(host: string): boolean {
  return host.replace(/\.$/, '').length <= 253 && /^([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$/i.test(host);
}

/**
 * A server name as a child sees it (SSL_TLS_SNI_SERVERNAME): a host name, lowercased and without
 * the trailing dot, since DNS names compare without case and `example.org.` is `example.org`; one
 * name, one value. Undefined for anything that is not a host name.
 */
export function canonicalHostName(name: string): string | undefined {
  return isHostName(name) ? name.replace(/\.$/, '').toLowerCase() : undefined;
}
