import { escapeUnprintable } from '../log/unprintable.js';
import { derChildren, derElements, oidText, OBJECT_IDENTIFIER, SEQUENCE, SET, type DerElement } from './der.js';

/*
 * A peer's certificate names (its subject) as text for its child: RFC 4514's string form, the one
 * LDAP, OpenSSL's -nameopt RFC2253, Python's cryptography and Java's X500Principal read and write:
 * `CN=alice,O=Example,C=DE`, the most specific RDN first, `+` between the attributes of one RDN.
 * OpenSSL's one-line form (`/C=DE/O=Example/CN=alice`, which libtls and so s6-tlsserver give) has
 * no escaping: a common name `x/O=Admin` reads as a second attribute there.
 */

/** Types written by name: RFC 4514's table, plus two that certificates often carry, as OpenSSL names them. */
const typeNames: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.6': 'C',
  '2.5.4.9': 'STREET',
  '0.9.2342.19200300.100.1.25': 'DC',
  '0.9.2342.19200300.100.1.1': 'UID',
  '1.2.840.113549.1.9.1': 'emailAddress',
  '2.5.4.5': 'serialNumber',
};

/** The subject of a certificate (DER) in RFC 4514 form; throws when the certificate cannot be read. */
export function certificateSubject(certificate: Buffer): string {
  const [tbs] = derChildren(derElements(certificate)[0], SEQUENCE, 'certificate');
  const fields = derChildren(tbs, SEQUENCE, 'tbsCertificate');
  // [0] version (optional), serialNumber, signature, issuer, validity, subject.
  const subject = fields[fields[0]?.tag === 0xa0 ? 5 : 4];
  return distinguishedName(subject?.encoding ?? Buffer.alloc(0));
}

/** A Name (DER) in RFC 4514 form. */
export function distinguishedName(name: Buffer): string {
  const rdns = derChildren(derElements(name)[0], SEQUENCE, 'name');
  return rdns
    .map((rdn) => {
      // RFC 5280 requires at least one attribute; an empty one would be written as nothing
      // between two commas, which no RFC 4514 parser reads back.
      const attributes = derChildren(rdn, SET, 'RDN');
      if (attributes.length === 0) throw new Error('an empty RDN');
      return attributes.map(attribute).join('+');
    })
    .reverse()
    .join(',');
}

/**
 * `type=value`. A type without a name is written as its OID and its value as `#` and the hex of its
 * DER, as RFC 4514 requires; so is a value that is not a string, or not a valid one of its type.
 */
function attribute(element: DerElement): string {
  const [type, value, extra] = derChildren(element, SEQUENCE, 'attribute');
  if (type?.tag !== OBJECT_IDENTIFIER || value === undefined || extra !== undefined) throw new Error('malformed attribute');
  const oid = oidText(type.content);
  const name = typeNames[oid];
  const text = name === undefined ? undefined : stringValue(value);
  return `${name ?? oid}=${text === undefined ? `#${hex(value.encoding)}` : escapeValue(text)}`;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The text of a string value, or undefined when it is not a string or not a valid one. */
function stringValue({ tag, content }: DerElement): string | undefined {
  switch (tag) {
    case 0x0c: // UTF8String
      try {
        return utf8.decode(content);
      } catch {
        return undefined;
      }
    case 0x12: // NumericString
    case 0x13: // PrintableString
    case 0x16: // IA5String
    case 0x1a: // VisibleString
      return content.every((byte) => byte < 0x80) ? content.toString('latin1') : undefined;
    case 0x14: // TeletexString: Latin-1, as OpenSSL and Go read it
      return content.toString('latin1');
    case 0x1e: {
      // BMPString: UTF-16BE, without lone surrogates
      if (content.length % 2 !== 0) return undefined;
      const text = Buffer.from(content).swap16().toString('utf16le');
      return /\p{Cs}/u.test(text) ? undefined : text;
    }
    case 0x1c: {
      // UniversalString: UTF-32BE
      if (content.length % 4 !== 0) return undefined;
      let text = '';
      for (let offset = 0; offset < content.length; offset += 4) {
        const code = content.readUInt32BE(offset);
        if (code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return undefined;
        text += String.fromCodePoint(code);
      }
      return text;
    }
    default:
      return undefined;
  }
}

/**
 * RFC 4514, section 2.4: a backslash before `"`, `+`, `,`, `;`, `<`, `>` and `\`, before a leading
 * space or `#` and a trailing space; also before `=`, which the RFC allows, so that `O=` only ever
 * starts an attribute. Each unprintable character (controls, format characters, separators) becomes
 * the `\XX` hex of its UTF-8 bytes, as NUL must (`\00`); all other text, UTF-8 included, is kept.
 */
export function escapeValue(value: string): string {
  const chars = [...value];
  return chars
    .map((char, index) => {
      if ('"+,;<>\\='.includes(char)) return `\\${char}`;
      if (char === ' ' && (index === 0 || index === chars.length - 1)) return '\\ ';
      if (char === '#' && index === 0) return '\\#';
      return escapeUnprintable(char, (unprintable) => [...Buffer.from(unprintable, 'utf8')].map((byte) => `\\${hex([byte])}`).join(''));
    })
    .join('');
}

function hex(bytes: Uint8Array | number[]): string {
  return Buffer.from(bytes).toString('hex').toUpperCase();
}
