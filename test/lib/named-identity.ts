import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AttributeTypeAndValue, AttributeValue, Name, RelativeDistinguishedName } from '@peculiar/asn1-x509';
import { signedCertificate } from '../../src/keygen/certificate.js';
import { generateKeys } from '../../src/keygen/keys.js';
import { opensslFingerprint, type TestIdentity } from './identity.js';

/** One attribute of a name: a string of a given ASN.1 type, or a value's DER exactly as given. */
export type NameValue =
  | { utf8String: string }
  | { printableString: string }
  | { ia5String: string }
  | { bmpString: string }
  | { teletexString: string }
  | { der: Buffer };

export interface NameAttribute {
  /** The attribute type's OID, dotted (2.5.4.3 is CN). */
  type: string;
  value: NameValue;
}

/** Well-known attribute types, for readable tests. */
export const oid = { CN: '2.5.4.3', O: '2.5.4.10', C: '2.5.4.6', UID: '0.9.2342.19200300.100.1.1', emailAddress: '1.2.840.113549.1.9.1' } as const;

/** A name's DER (RDNSequence) from its RDNs, outermost first as in the certificate, each a set of attributes in the order given. */
export function buildName(rdns: NameAttribute[][]): Name {
  return new Name(rdns.map((rdn) => new RelativeDistinguishedName(rdn.map(({ type, value }) => new AttributeTypeAndValue({ type, value: attributeValue(value) })))));
}

function attributeValue(value: NameValue): AttributeValue {
  if (!('der' in value)) return new AttributeValue(value);
  const { der } = value;
  return new AttributeValue({ anyValue: der.buffer.slice(der.byteOffset, der.byteOffset + der.byteLength) as ArrayBuffer });
}

/** A self-signed EC identity whose subject (and issuer) is `rdns`, built with tlsd-keygen's own code. */
export async function identityNamed(dir: string, label: string, rdns: NameAttribute[][]): Promise<TestIdentity> {
  const keys = await generateKeys({ type: 'ec' });
  const now = Date.now();
  const der = signedCertificate({ keys, type: 'ec', name: buildName(rdns), notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000) });
  const key = join(dir, `${label}-key.pem`);
  const cert = join(dir, `${label}-cert.pem`);
  writeFileSync(key, keys.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  writeFileSync(cert, `-----BEGIN CERTIFICATE-----\n${der.toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END CERTIFICATE-----\n`);
  return { key, cert, fingerprint: opensslFingerprint(cert) };
}
