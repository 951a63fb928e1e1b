import type { ConnectionOptions } from 'node:tls';
import t, { type Test } from 'tap';
import { connectTls, readAll } from './lib/client.js';
import { startClient } from './lib/external.js';
import { makeIdentity, tempDir, type TestIdentity } from './lib/identity.js';
import { identityNamed, oid, type NameAttribute } from './lib/named-identity.js';
import { clientHello, firstAnswer } from './lib/soak/tls-records.js';
import { fileAppears } from './lib/text.js';
import { startTlsd } from './lib/tlsd.js';

/*
 * What a peer chooses (the server name it sends, the subject of its certificate) reaches the child's
 * environment only in a documented form, and the log only escaped: a hostile value can neither add
 * a variable or a log line nor pass for another value.
 */

const dir = tempDir();
const server = makeIdentity(dir, 'server');
const alice = makeIdentity(dir, 'alice');

/** Anything that could break a line, reorder it on screen or hide in it. */
const unprintable = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;

/** The child's environment as `env -0` printed it: exact, whatever the values hold. */
function environment(output: Buffer): Map<string, string> {
  const map = new Map<string, string>();
  for (const entry of output.toString('utf8').split('\0')) {
    const equals = entry.indexOf('=');
    if (equals > 0) map.set(entry.slice(0, equals), entry.slice(equals + 1));
  }
  return map;
}

async function childEnvironment(port: number, identity: TestIdentity, extra: ConnectionOptions = {}): Promise<Map<string, string>> {
  const socket = await connectTls(port, identity, extra);
  const reply = readAll(socket);
  socket.end();
  return environment(await reply);
}

/** Every line of tlsd's log is one of its own, and holds nothing unprintable. */
function checkLog(t: Test, log: string): void {
  const lines = log.split('\n').filter((line) => line !== '');
  t.same(lines.filter((line) => !line.startsWith('tlsd: ')), [], 'every log line is a tlsd line');
  t.same(lines.filter((line) => unprintable.test(line)), [], 'no log line holds a control, format or separator character');
}

t.test('SSL_TLS_SNI_SERVERNAME: a host name, lowercased, without the trailing dot; anything else is left out and logged', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['env', '-0'] });
  const longest = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`; // 253 bytes
  const cases: Array<[sent: string, expected: string | undefined]> = [
    ['chat.example.org', 'chat.example.org'],
    ['Chat.Example.ORG', 'chat.example.org'],
    ['chat.example.org.', 'chat.example.org'],
    ['xn--caf-dma.example', 'xn--caf-dma.example'],
    ['_service.example', '_service.example'],
    ['localhost', 'localhost'],
    [longest, longest],
    [`${longest}.`, longest],
    ['a\nX=1\tb', undefined],
    ['x=1', undefined],
    ['café.example', undefined],
    ['a\u007fb', undefined],
    ['a\u0085b', undefined],
    ['sp ace', undefined],
    ['-lead.example', undefined],
    ['trail-.example', undefined],
    ['a..b', undefined],
    ['..', undefined],
    ['a/b', undefined],
    [`${longest}d`, undefined],
    [`${'a'.repeat(64)}.example`, undefined],
  ];
  for (const [sent, expected] of cases) {
    const env = await childEnvironment(tlsd.port, alice, { servername: sent });
    t.equal(env.get('SHA256'), alice.fingerprint, `SNI ${JSON.stringify(sent)}: served`);
    t.equal(env.get('SSL_TLS_SNI_SERVERNAME'), expected, `SNI ${JSON.stringify(sent)}: ${expected === undefined ? 'unset' : JSON.stringify(expected)}`);
  }
  // Node's client sends names as UTF-8; the log shows the bytes, escaped.
  await tlsd.waitFor(/: the server name the client sent, "a\\x0aX=1\\x09b", is not a host name: SSL_TLS_SNI_SERVERNAME left unset/);
  await tlsd.waitFor(/: the server name the client sent, "caf\\xc3\\xa9\.example", is not a host name/);
  await tlsd.waitFor(/: the server name the client sent, "a\\x7fb", is not a host name/);
  await tlsd.waitFor(/: the server name the client sent, "x=1", is not a host name/);

  // openssl sends any bytes it is given, not only UTF-8.
  const openssl = startClient(t, 'sh', ['-c', 'exec openssl s_client -connect "127.0.0.1:$1" -cert "$2" -key "$3" -quiet -servername "$(printf "\\377\\200\\033[2J")"', 'sh', String(tlsd.port), alice.cert, alice.key]);
  await openssl.exited;
  const env = environment(openssl.stdout());
  t.equal(env.get('SHA256'), alice.fingerprint, 'openssl s_client: served');
  t.notOk(env.has('SSL_TLS_SNI_SERVERNAME'), 'openssl s_client with bytes that are not UTF-8: unset');
  await tlsd.waitFor(/: the server name the client sent, "\\xff\\x80\\x1b\[2J", is not a host name/);

  // A NUL cannot reach tlsd at all: OpenSSL ends the handshake with a fatal alert, unrecognized_name
  // (112) from OpenSSL 3.0 (Node 20), decode_error (50) from 3.5 (Node 22 and 24), which refuses
  // the ClientHello itself.
  const answer = await firstAnswer(tlsd.port, clientHello({ version: 0x0303, serverName: Buffer.from('a\0b.example') }));
  const alert = process.versions.openssl.startsWith('3.0.') ? 112 : 50;
  t.same(answer, { kind: 'alert', level: 2, description: alert }, `a name with a NUL ends the handshake (OpenSSL ${process.versions.openssl})`);
  await tlsd.waitFor(/TLS handshake has failed/);
  checkLog(t, tlsd.stderr());
});

t.test('SSL_TLS_SNI_SERVERNAME when dialing: the name sent, in the same form', async (t) => {
  const acceptor = await startTlsd(t, { identity: server, command: ['cat'] });
  const out = tempDir();
  const client = await startTlsd(t, { identity: alice, stdin: 'pipe', command: ['sh', '-c', `printf '%s\\n' "\${SSL_TLS_SNI_SERVERNAME-unset}" > "${out}/sni.tmp"; mv "${out}/sni.tmp" "${out}/sni"`] });
  client.proc.stdin!.write(`LocalHost ${acceptor.port}\n`);
  t.equal(await fileAppears(`${out}/sni`), 'localhost\n');
});

t.test('SSL_PEER_CERT_SUBJECT: the subject in RFC 4514 form, escaped so that no value passes for another', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['env', '-0'] });
  const cn = (value: string): NameAttribute[][] => [[{ type: oid.CN, value: { utf8String: value } }]];
  const cases: Array<[label: string, subject: NameAttribute[][], expected: string | undefined]> = [
    ['plain', cn('alice'), 'CN=alice'],
    [
      'several RDNs, most specific first',
      [[{ type: oid.C, value: { printableString: 'DE' } }], [{ type: oid.O, value: { utf8String: 'Example' } }], [{ type: oid.CN, value: { utf8String: 'alice' } }]],
      'CN=alice,O=Example,C=DE',
    ],
    ['a slash form inside a value', cn('x/O=Admin'), 'CN=x/O\\=Admin'],
    ['a comma form inside a value', cn('x,O=Admin'), 'CN=x\\,O\\=Admin'],
    ['plus, backslash, quotes, angles, semicolon', cn('a+b\\c"d<e>f;g'), 'CN=a\\+b\\\\c\\"d\\<e\\>f\\;g'],
    ['a newline and a tab', cn('a\nX=1\tb'), 'CN=a\\0AX\\=1\\09b'],
    ['DEL and a C1 control', cn('a\u007fb\u0085c'), 'CN=a\\7Fb\\C2\\85c'],
    ['a NUL', cn('a\0b'), 'CN=a\\00b'],
    ['a bidirectional override', cn('\u202eevil'), 'CN=\\E2\\80\\AEevil'],
    ['UTF-8 text', cn('Zoë Ångström 日本'), 'CN=Zoë Ångström 日本'],
    ['leading and trailing spaces, leading #', cn(' #x '), 'CN=\\ #x\\ '],
    ['a leading #', cn('#x'), 'CN=\\#x'],
    ['an empty value', cn(''), 'CN='],
    [
      'a multi-valued RDN',
      [[{ type: oid.O, value: { utf8String: 'Example' } }], [{ type: oid.CN, value: { utf8String: 'alice' } }, { type: oid.UID, value: { utf8String: '42' } }]],
      'CN=alice+UID=42,O=Example',
    ],
    ['a BMPString', [[{ type: oid.CN, value: { bmpString: 'Zoë' } }]], 'CN=Zoë'],
    ['emailAddress', [[{ type: oid.emailAddress, value: { ia5String: 'alice@example.org' } }]], 'emailAddress=alice@example.org'],
    ['a TeletexString', [[{ type: oid.CN, value: { der: Buffer.from([0x14, 0x02, 0x63, 0xe9]) } }]], 'CN=cé'],
    ['a UniversalString', [[{ type: oid.CN, value: { der: Buffer.from([0x1c, 0x08, 0, 0, 0, 0x41, 0, 1, 0xf6, 0x00]) } }]], 'CN=A😀'],
    ['a UTF8String with a byte order mark', [[{ type: oid.CN, value: { der: Buffer.from([0x0c, 0x04, 0xef, 0xbb, 0xbf, 0x61]) } }]], 'CN=\\EF\\BB\\BFa'],
    ['a PrintableString with a newline', [[{ type: oid.CN, value: { der: Buffer.from([0x13, 0x03, 0x61, 0x0a, 0x62]) } }]], 'CN=a\\0Ab'],
    ['a PrintableString that is not ASCII', [[{ type: oid.CN, value: { der: Buffer.from([0x13, 0x02, 0x61, 0xe9]) } }]], 'CN=#130261E9'],
    ['a SEQUENCE', [[{ type: oid.CN, value: { der: Buffer.from([0x30, 0x03, 0x02, 0x01, 0x05]) } }]], 'CN=#3003020105'],
    ['a type with no name', [[{ type: '1.2.3.4', value: { utf8String: 'x' } }]], '1.2.3.4=#0C0178'],
    ['an empty subject', [], undefined],
  ];
  for (const [label, subject, expected] of cases) {
    const identity = await identityNamed(dir, label.replace(/\W+/g, '-'), subject);
    const env = await childEnvironment(tlsd.port, identity);
    t.equal(env.get('SHA256'), identity.fingerprint, `${label}: served`);
    t.equal(env.get('SSL_PEER_CERT_SUBJECT'), expected, `${label}: ${expected === undefined ? 'unset' : expected}`);
  }
  // Longer than 8192 bytes once escaped: more than any real subject, and execve would refuse it.
  const long = await identityNamed(dir, 'long', cn(',x'.repeat(2730)));
  const longEnv = await childEnvironment(tlsd.port, long);
  t.equal(longEnv.get('SHA256'), long.fingerprint, 'a subject of 8193 bytes: served');
  t.notOk(longEnv.has('SSL_PEER_CERT_SUBJECT'), 'a subject of 8193 bytes: unset');
  await tlsd.waitFor(/: the subject of the peer's certificate is 8193 bytes long, more than 8192: SSL_PEER_CERT_SUBJECT left unset/);
  const longest = await identityNamed(dir, 'longest', cn(`${',x'.repeat(2729)}xx`));
  t.equal((await childEnvironment(tlsd.port, longest)).get('SSL_PEER_CERT_SUBJECT'), `CN=${'\\,x'.repeat(2729)}xx`, 'a subject of 8192 bytes: set');

  // OpenSSL takes BER where DER is due (an indefinite length, here); tlsd reads DER only.
  const ber = await identityNamed(dir, 'ber', [[{ type: oid.CN, value: { der: Buffer.from([0x2c, 0x80, 0x0c, 0x01, 0x61, 0x00, 0x00]) } }]]);
  const env = await childEnvironment(tlsd.port, ber);
  t.equal(env.get('SHA256'), ber.fingerprint, 'a subject in BER: served');
  t.notOk(env.has('SSL_PEER_CERT_SUBJECT'), 'a subject in BER: unset');
  await tlsd.waitFor(/: cannot read the subject of the peer's certificate \(indefinite length, not DER\): SSL_PEER_CERT_SUBJECT left unset/);
  checkLog(t, tlsd.stderr());
});
