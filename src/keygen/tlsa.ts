import { canonicalHostName } from '../input/host-name.js';

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
  const name = canonicalHostName(host);
  if (name === undefined) throw new TlsaError(`expected a DNS name such as example.org, got ${JSON.stringify(host)}`);
  if (name.split('.').every((label) => /^\d+$/.test(label))) throw new TlsaError(`expected a DNS name, not an address: ${host}`);
  return `${name}.`;
}
