export class TlsaError extends Error {}

/**
 * The DANE record that pins a certificate for `host` and `port`: usage 3 (DANE-EE: the server's
 * own certificate, no CA), selector 0 (the full certificate), matching type 1 (SHA-256), so its data
 * is the very fingerprint tlsd puts in SHA256.
 */
export function tlsaRecord(host: string, port: number, fingerprint: string): string {
  return `_${port}._tcp.${absoluteName(host)} IN TLSA 3 0 1 ${fingerprint}`;
}

/** A DNS name with its final dot, so that the line means the same in any zone file. */
export function absoluteName(host: string): string {
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  const labels = name.split('.');
  const valid = name.length > 0 && name.length <= 253 && labels.every((label) => /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/.test(label));
  if (!valid) throw new TlsaError(`expected a DNS name such as example.org, got ${JSON.stringify(host)}`);
  if (labels.every((label) => /^\d+$/.test(label))) throw new TlsaError(`expected a DNS name, not an address: ${host}`);
  return `${name}.`;
}
