import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import t from 'tap';
import { derElements, oidText } from '../src/peer/der.js';
import { certificateSubject, distinguishedName, escapeValue } from '../src/peer/distinguished-name.js';
import { canonicalHostName } from '../src/input/host-name.js';
import { quote } from '../src/log/logger.js';
import { tempDir } from './lib/identity.js';
import { buildName, oid, type NameAttribute } from './lib/named-identity.js';

const nameDer = (rdns: NameAttribute[][]): Buffer => Buffer.from(AsnConvert.serialize(buildName(rdns)));
/** A name of one CN with this value, encoded by hand: the library re-reads values it is given, and rejects some. */
function cnDer(value: number[]): Buffer {
  const tlv = (tag: number, body: Buffer): Buffer => Buffer.concat([Buffer.from([tag, body.length]), body]);
  return tlv(0x30, tlv(0x31, tlv(0x30, Buffer.concat([Buffer.from([0x06, 0x03, 0x55, 0x04, 0x03]), Buffer.from(value)]))));
}

t.test('RFC 4514 escaping of one value', async (t) => {
  const cases: Array<[string, string]> = [
    ['alice', 'alice'],
    ['', ''],
    ['a,b+c"d\\e<f>g;h=i', 'a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h\\=i'],
    [' lead', '\\ lead'],
    ['trail ', 'trail\\ '],
    [' ', '\\ '],
    ['  ', '\\ \\ '],
    ['#x', '\\#x'],
    ['x#', 'x#'],
    [' #', '\\ #'],
    ['a b', 'a b'],
    ['a\0b', 'a\\00b'],
    ['\n\r\t\u001b', '\\0A\\0D\\09\\1B'],
    ['\u007f\u0080\u009f', '\\7F\\C2\\80\\C2\\9F'],
    ['\u200b\u200e\u202e\u2066\ufeff', '\\E2\\80\\8B\\E2\\80\\8E\\E2\\80\\AE\\E2\\81\\A6\\EF\\BB\\BF'],
    ['\u2028\u2029', '\\E2\\80\\A8\\E2\\80\\A9'],
    ['\u{e0001}', '\\F3\\A0\\80\\81'],
    ['Zoë 日本 😀', 'Zoë 日本 😀'],
    ['/O=Admin', '/O\\=Admin'],
  ];
  for (const [value, expected] of cases) t.equal(escapeValue(value), expected, quote(value));
});

t.test('a Name in RFC 4514 form', async (t) => {
  t.equal(distinguishedName(nameDer([])), '', 'the empty name');
  t.equal(
    distinguishedName(nameDer([[{ type: oid.C, value: { printableString: 'DE' } }], [{ type: oid.O, value: { utf8String: 'Example' } }], [{ type: oid.CN, value: { utf8String: 'alice' } }]])),
    'CN=alice,O=Example,C=DE',
    'the most specific RDN first',
  );
  t.equal(
    distinguishedName(nameDer([[{ type: oid.CN, value: { utf8String: 'a' } }, { type: oid.UID, value: { utf8String: 'b,c' } }]])),
    'CN=a+UID=b\\,c',
    'a multi-valued RDN, in encoding order',
  );
  const named: Array<[string, string]> = [
    ['2.5.4.7', 'L'],
    ['2.5.4.8', 'ST'],
    ['2.5.4.11', 'OU'],
    ['2.5.4.9', 'STREET'],
    ['0.9.2342.19200300.100.1.25', 'DC'],
    ['2.5.4.5', 'serialNumber'],
    [oid.emailAddress, 'emailAddress'],
  ];
  for (const [type, name] of named) t.equal(distinguishedName(nameDer([[{ type, value: { utf8String: 'x' } }]])), `${name}=x`, name);

  // Strings of each type; anything that is not a valid string becomes #hex of its DER.
  t.equal(distinguishedName(cnDer([0x0c, 0x03, 0x61, 0xff, 0x0a])), 'CN=#0C0361FF0A', 'a UTF8String that is not UTF-8');
  t.equal(distinguishedName(cnDer([0x0c, 0x02, 0xc0, 0xaf])), 'CN=#0C02C0AF', 'an overlong UTF-8 form');
  t.equal(distinguishedName(cnDer([0x0c, 0x03, 0xed, 0xa0, 0x80])), 'CN=#0C03EDA080', 'an encoded surrogate');
  t.equal(distinguishedName(cnDer([0x0c, 0x04, 0xef, 0xbb, 0xbf, 0x61])), 'CN=\\EF\\BB\\BFa', 'a byte order mark is kept, escaped');
  t.equal(distinguishedName(cnDer([0x13, 0x02, 0x61, 0xe9])), 'CN=#130261E9', 'a PrintableString that is not ASCII');
  t.equal(distinguishedName(cnDer([0x16, 0x03, 0x61, 0x0a, 0x62])), 'CN=a\\0Ab', 'an IA5String with a newline');
  t.equal(distinguishedName(cnDer([0x12, 0x03, 0x31, 0x20, 0x32])), 'CN=1 2', 'a NumericString');
  t.equal(distinguishedName(cnDer([0x1a, 0x02, 0x61, 0x62])), 'CN=ab', 'a VisibleString');
  t.equal(distinguishedName(cnDer([0x14, 0x02, 0x63, 0xe9])), 'CN=cé', 'a TeletexString, as Latin-1');
  t.equal(distinguishedName(cnDer([0x1e, 0x06, 0x00, 0x5a, 0x00, 0x6f, 0x00, 0xeb])), 'CN=Zoë', 'a BMPString');
  t.equal(distinguishedName(cnDer([0x1e, 0x04, 0xd8, 0x00, 0x00, 0x41])), 'CN=#1E04D8000041', 'a BMPString with a lone surrogate');
  t.equal(distinguishedName(cnDer([0x1e, 0x03, 0x00, 0x41, 0x00])), 'CN=#1E03004100', 'a BMPString of odd length');
  t.equal(distinguishedName(cnDer([0x1c, 0x08, 0, 0, 0, 0x41, 0, 1, 0xf6, 0])), 'CN=A😀', 'a UniversalString');
  t.equal(distinguishedName(cnDer([0x1c, 0x04, 0, 0x11, 0, 0])), 'CN=#1C0400110000', 'a UniversalString beyond Unicode');
  t.equal(distinguishedName(cnDer([0x1c, 0x04, 0, 0, 0xd8, 0])), 'CN=#1C040000D800', 'a UniversalString with a surrogate');
  t.equal(distinguishedName(cnDer([0x04, 0x02, 0x0a, 0x00])), 'CN=#04020A00', 'an OCTET STRING');
  t.equal(distinguishedName(cnDer([0x1f, 0x81, 0x00, 0x01, 0x00])), 'CN=#1F81000100', 'a value with a high tag number');
  t.equal(distinguishedName(nameDer([[{ type: '1.2.3.4', value: { utf8String: 'x' } }]])), '1.2.3.4=#0C0178', 'a type without a name: its OID, the value in hex');
  t.equal(distinguishedName(nameDer([[{ type: '2.999.1', value: { utf8String: 'x' } }]])), '2.999.1=#0C0178', 'an OID whose first octet holds a large second arc');
  const long = 'x'.repeat(300);
  t.equal(distinguishedName(nameDer([[{ type: oid.CN, value: { utf8String: long } }]])), `CN=${long}`, 'a value with a long-form length');

  // Not DER: no guess, an error the caller logs.
  t.throws(() => distinguishedName(cnDer([0x2c, 0x80, 0x0c, 0x01, 0x61, 0x00, 0x00])), /indefinite length, not DER/);
  t.throws(() => distinguishedName(Buffer.from([0x30, 0x05, 0x31, 0x03])), /truncated DER/);
  t.throws(() => distinguishedName(Buffer.from([0x31, 0x00])), /name: expected tag 0x30, got 0x31/);
  t.throws(() => distinguishedName(Buffer.from([0x30, 0x02, 0x30, 0x00])), /RDN: expected tag 0x31, got 0x30/);
  t.throws(() => distinguishedName(Buffer.from([0x30, 0x04, 0x31, 0x02, 0x30, 0x00])), /malformed attribute/);
  // OpenSSL takes a subject with an empty SET; `CN=a,,O=Example` is no RFC 4514 name.
  const cn = nameDer([[{ type: oid.CN, value: { utf8String: 'a' } }]]);
  const emptyRdn = Buffer.concat([Buffer.from([0x30, cn.length - 2 + 2]), cn.subarray(2), Buffer.from([0x31, 0x00])]);
  t.throws(() => distinguishedName(emptyRdn), /an empty RDN/, 'an empty RDN: unreadable, not a name with an empty part');
});

t.test('DER pieces', async (t) => {
  t.equal(oidText(Buffer.from([0x55, 0x04, 0x03])), '2.5.4.3');
  t.equal(oidText(Buffer.from([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01])), '1.2.840.113549.1.9.1');
  t.equal(oidText(Buffer.from([0x88, 0x37, 0x01])), '2.999.1');
  t.throws(() => oidText(Buffer.from([0x55, 0x84])), /malformed object identifier/);
  t.throws(() => oidText(Buffer.alloc(0)), /malformed object identifier/);
  t.throws(() => derElements(Buffer.from([0x04, 0x84, 0x01, 0x00, 0x00, 0x00])), /longer than 16 MB/);
  t.same(
    derElements(Buffer.from([0x04, 0x81, 0x01, 0x61, 0x05, 0x00])).map((element) => [element.tag, element.content.toString('hex'), element.encoding.toString('hex')]),
    [
      [0x04, '61', '04810161'],
      [0x05, '', '0500'],
    ],
  );
});

t.test("a certificate's subject, read from its DER", async (t) => {
  const dir = tempDir();
  const key = join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', join(dir, 'v3.pem'), '-days', '2', '-subj', '/C=DE/O=Ex, Inc./CN=alice'], { stdio: 'ignore' });
  const v3 = new X509Certificate(readFileSync(join(dir, 'v3.pem')));
  t.equal(certificateSubject(v3.raw), 'CN=alice,O=Ex\\, Inc.,C=DE', 'a v3 certificate from openssl');
  // Version 1 certificates have no [0] version field.
  execFileSync('openssl', ['req', '-new', '-key', key, '-subj', '/CN=old/O=Old', '-out', join(dir, 'v1.csr')], { stdio: 'ignore' });
  execFileSync('openssl', ['x509', '-req', '-in', join(dir, 'v1.csr'), '-signkey', key, '-out', join(dir, 'v1.pem'), '-days', '2'], { stdio: 'ignore' });
  const v1 = new X509Certificate(readFileSync(join(dir, 'v1.pem')));
  t.match(execFileSync('openssl', ['x509', '-in', join(dir, 'v1.pem'), '-noout', '-text']).toString(), /Version: 1 \(0x0\)/, 'openssl made a version 1 certificate');
  t.equal(certificateSubject(v1.raw), 'O=Old,CN=old', 'a v1 certificate');
  t.throws(() => certificateSubject(Buffer.from([0x30, 0x00])), /tbsCertificate: expected tag 0x30, got nothing/);
});

t.test('server names: host names only, lowercased, without the trailing dot', async (t) => {
  const longest = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`;
  const cases: Array<[string, string | undefined]> = [
    ['example.org', 'example.org'],
    ['EXAMPLE.org.', 'example.org'],
    ['xn--caf-dma.example', 'xn--caf-dma.example'],
    ['_acme._tcp.example', '_acme._tcp.example'],
    ['a', 'a'],
    ['127.0.0.1', '127.0.0.1'],
    [longest, longest],
    [`${longest}.`, longest],
    [`${longest}d`, undefined],
    [`${'a'.repeat(64)}.example`, undefined],
    ['', undefined],
    ['.', undefined],
    ['..', undefined],
    ['a..b', undefined],
    ['.a', undefined],
    ['a.b..', undefined],
    ['-a', undefined],
    ['a-', undefined],
    ['a b', undefined],
    ['a\nb', undefined],
    ['a=b', undefined],
    ['a/b', undefined],
    ['café', undefined],
    ['\u212a.example', undefined], // the Kelvin sign, which lowercases to an ASCII k
    ['caf\u00c3\u00a9', undefined],
    ['a\u0000b', undefined],
  ];
  for (const [name, expected] of cases) t.equal(canonicalHostName(name), expected, JSON.stringify(name));
});
