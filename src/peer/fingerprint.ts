import { createHash } from 'node:crypto';

/** The peer's identity: lowercase hex SHA-256 of its leaf certificate in DER, as the original. */
export function fingerprint(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex');
}
