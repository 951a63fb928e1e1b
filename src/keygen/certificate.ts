/*
 * The certificate is built with @peculiar/asn1-x509 (and its @peculiar/asn1-schema): typed
 * TypeScript classes for the RFC 5280 structures and a DER encoder, nothing more. Keys and
 * signatures come from node:crypto, that is from the OpenSSL Node is built with.
 *
 * Why this one: it is small (7 packages, 2 MB, no native code), written in TypeScript with its own
 * types, kept up by PeculiarVentures (the authors of the WebCrypto polyfills and PKI.js) and used by
 * millions of installs a week, and it does the one thing missing from node:crypto, which can read a
 * certificate (X509Certificate) but not write one. The alternatives did worse: @peculiar/x509
 * (the same authors' high-level layer on top of this one) pulls in a dependency-injection container
 * that needs a global `reflect-metadata` polyfill, and 20 packages; node-forge is large, weakly
 * typed, and generates RSA keys in JavaScript, slowly; PKI.js is larger and dynamically typed in
 * places. Doing the signing ourselves also keeps key generation native: WebCrypto would do as well
 * (Ed25519 works in Node 20's WebCrypto as { name: 'Ed25519' }), but node:crypto exports the keys
 * as PEM directly.
 */
import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  BasicConstraints,
  Certificate,
  Extension,
  Extensions,
  id_ce_basicConstraints,
  id_ce_subjectKeyIdentifier,
  Name,
  RelativeDistinguishedName,
  SubjectKeyIdentifier,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
} from '@peculiar/asn1-x509';
import type { KeyPair, KeyType } from './keys.js';
import { attributeOid, type SubjectAttribute } from './subject.js';

export interface CertificateSpec {
  keys: KeyPair;
  type: KeyType;
  subject: SubjectAttribute[];
  notBefore: Date;
  notAfter: Date;
}

/** The signature algorithm for each key type: SHA-256 where the algorithm takes a hash. */
const signatureAlgorithms: Record<KeyType, { oid: string; hash: string | null; nullParameters: boolean }> = {
  ec: { oid: '1.2.840.10045.4.3.2', hash: 'sha256', nullParameters: false }, // ecdsa-with-SHA256
  rsa: { oid: '1.2.840.113549.1.1.11', hash: 'sha256', nullParameters: true }, // sha256WithRSAEncryption
  ed25519: { oid: '1.3.101.112', hash: null, nullParameters: false }, // Ed25519 (RFC 8410)
};

// DER NULL: RFC 4055 has RSA algorithm identifiers carry it rather than no parameters.
const derNull = new Uint8Array([0x05, 0x00]).buffer;

/** A self-signed X.509 v3 certificate, in DER. */
export function selfSignedCertificate(spec: CertificateSpec): Buffer {
  return signedCertificate({ ...spec, name: subjectName(spec.subject) });
}

/**
 * A self-signed certificate for a name as it is: the tests build names no --subject would make
 * (control characters, multi-valued RDNs, odd string types) to see what a peer's children get.
 */
export function signedCertificate(spec: Omit<CertificateSpec, 'subject'> & { name: Name }): Buffer {
  const { name } = spec;
  const algorithm = signatureAlgorithms[spec.type];
  const signatureAlgorithm = new AlgorithmIdentifier({ algorithm: algorithm.oid, ...(algorithm.nullParameters ? { parameters: derNull } : {}) });
  const publicKeyInfo = AsnConvert.parse(spec.keys.publicKey.export({ type: 'spki', format: 'der' }), SubjectPublicKeyInfo);
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: serialNumber(),
    signature: signatureAlgorithm,
    issuer: name,
    validity: new Validity({ notBefore: spec.notBefore, notAfter: spec.notAfter }),
    subject: name,
    subjectPublicKeyInfo: publicKeyInfo,
    extensions: extensions(publicKeyInfo),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const signature = signTbs(tbsDer, spec.keys.privateKey, algorithm.hash);
  const certificate = new Certificate({ tbsCertificate: tbs, signatureAlgorithm, signatureValue: toArrayBuffer(signature) });
  return Buffer.from(AsnConvert.serialize(certificate));
}

function subjectName(subject: SubjectAttribute[]): Name {
  return new Name(
    subject.map(({ key, value }) => {
      // Country codes are PrintableString by definition; everything else is UTF8String (RFC 5280).
      const encoded = key === 'C' ? new AttributeValue({ printableString: value }) : new AttributeValue({ utf8String: value });
      return new RelativeDistinguishedName([new AttributeTypeAndValue({ type: attributeOid(key), value: encoded })]);
    }),
  );
}

/** 16 random bytes, positive and without a leading zero byte, as RFC 5280 asks (at most 20). */
function serialNumber(): ArrayBuffer {
  const bytes = randomBytes(16);
  bytes[0] = 0x40 | (bytes[0]! & 0x3f);
  return toArrayBuffer(bytes);
}

/**
 * basicConstraints CA:FALSE (critical): the certificate is an identity, not an authority, so a peer
 * that puts it in a --ca bundle trusts this one certificate and nothing its key might sign.
 * subjectKeyIdentifier: SHA-1 of the public key (RFC 5280 method 1), as openssl adds it.
 */
function extensions(publicKeyInfo: SubjectPublicKeyInfo): Extensions {
  const keyId = createHash('sha1').update(Buffer.from(publicKeyInfo.subjectPublicKey)).digest();
  return new Extensions([
    new Extension({ extnID: id_ce_basicConstraints, critical: true, extnValue: new OctetString(AsnConvert.serialize(new BasicConstraints({ cA: false }))) }),
    new Extension({ extnID: id_ce_subjectKeyIdentifier, critical: false, extnValue: new OctetString(AsnConvert.serialize(new SubjectKeyIdentifier(keyId))) }),
  ]);
}

function signTbs(tbs: Buffer, privateKey: KeyObject, hash: string | null): Buffer {
  // ECDSA signatures go into X.509 as DER (r, s), which is node:crypto's default encoding.
  return sign(hash, tbs, privateKey);
}

function toArrayBuffer(bytes: Buffer): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}
