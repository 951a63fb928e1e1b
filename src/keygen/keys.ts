import { generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';

export const keyTypes = ['ec', 'rsa', 'ed25519'] as const;
export type KeyType = (typeof keyTypes)[number];

export const defaultRsaBits = 2048;
/** Below 2048 bits RSA is no longer safe; above 8192 generation takes minutes for no real gain. */
export const minRsaBits = 2048;
export const maxRsaBits = 8192;

export interface KeySpec {
  type: KeyType;
  /** RSA modulus size; only for `rsa`. */
  bits?: number;
}

export interface KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

const generate = promisify(generateKeyPair);

/**
 * A fresh key pair from OpenSSL through node:crypto: native speed (RSA 4096 in about a second),
 * and the same keys `openssl genpkey` makes. EC keys are on P-256, the curve every TLS stack has.
 */
export function generateKeys(spec: KeySpec): Promise<KeyPair> {
  switch (spec.type) {
    case 'ec':
      return generate('ec', { namedCurve: 'P-256' });
    case 'rsa':
      return generate('rsa', { modulusLength: spec.bits ?? defaultRsaBits, publicExponent: 0x10001 });
    case 'ed25519':
      return generate('ed25519');
  }
}

/** For messages: "EC P-256", "RSA 3072", "Ed25519". */
export function describeKey(spec: KeySpec): string {
  switch (spec.type) {
    case 'ec':
      return 'EC P-256';
    case 'rsa':
      return `RSA ${spec.bits ?? defaultRsaBits}`;
    case 'ed25519':
      return 'Ed25519';
  }
}
