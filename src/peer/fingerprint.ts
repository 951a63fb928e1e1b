import { createHash } from 'node:crypto';

/** The peer's identity: lowercase hex SHA-256 of its leaf certificate in DER, as the original. */
export function fingerprint(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex');
}

/** Whether `text` is a fingerprint as tlsd writes it (SHA256, alias files): 64 lowercase hex digits. */
export function isFingerprint(text: string): boolean {
  return /^[0-9a-f]{64}$/.test(text);
}

/**
 * A fingerprint as tlsd writes it, from that form or from openssl's `AB:CD:…`, optionally prefixed
 * `SHA256:`; undefined when it is neither.
 */
export function normalizeFingerprint(text: string): string | undefined {
  const hex = text.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  return isFingerprint(hex) ? hex : undefined;
}
