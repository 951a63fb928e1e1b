import t from 'tap';
import { looksLikeProxyHeader, MAX_HEADER_BYTES, parseProxyHeader, V1_MAX_BYTES } from '../src/input/proxy-header.js';
import { TrustedProxies } from '../src/core/trusted-proxies.js';
import { proxyV2, V2_LOCAL } from './lib/proxy-protocol.js';

const v1 = (line: string): Buffer => Buffer.from(line, 'latin1');
const hello = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05]);

t.test('v1: TCP4 and TCP6 lines name the client, and nothing after the CRLF is consumed', async (t) => {
  const line = v1('PROXY TCP4 192.0.2.7 198.51.100.1 40112 443\r\n');
  t.same(parseProxyHeader(Buffer.concat([line, hello])), {
    proxied: { source: { address: '192.0.2.7', port: 40112 }, destination: { address: '198.51.100.1', port: 443 } },
    version: 1,
    length: line.length,
  });
  const sixLine = v1('PROXY TCP6 2001:DB8:0:0::0001 ::ffff:7f00:1 0 65535\r\n');
  const six = parseProxyHeader(sixLine);
  t.same(six, { proxied: { source: { address: '2001:db8::1', port: 0 }, destination: { address: '::ffff:127.0.0.1', port: 65535 } }, version: 1, length: sixLine.length }, 'IPv6 in the one spelling Node gives socket addresses');
  t.same(parseProxyHeader(v1('PROXY UNKNOWN\r\n')), { local: true, length: 15 }, 'UNKNOWN: the balancer speaking for itself');
  t.same(parseProxyHeader(v1('PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 1 2\r\n')), { local: true, length: 43 }, 'UNKNOWN ignores the rest of its line');
});

t.test('v1: cut anywhere, it is incomplete, never wrong', async (t) => {
  const line = v1('PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n');
  for (let n = 1; n < line.length; n++) t.same(parseProxyHeader(line.subarray(0, n)), { incomplete: true }, `${n} bytes`);
  t.match(parseProxyHeader(line), { proxied: { source: { address: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 } }, length: line.length });
  const longest = v1('PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n');
  t.equal(longest.length, V1_MAX_BYTES, 'the longest line the spec allows');
  t.same(parseProxyHeader(longest), { local: true, length: V1_MAX_BYTES }, 'is read whole');
});

t.test('v1: malformed lines are refused with what is wrong', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['PROXY TCP4 192.0.2.7 198.51.100.1 40112 443 \r\n', /7 fields/],
    ['PROXY TCP4 192.0.2.7  198.51.100.1 40112 443\r\n', /7 fields/],
    ['PROXY TCP5 192.0.2.7 198.51.100.1 40112 443\r\n', /protocol "TCP5"/],
    ['PROXY TCP4 2001:db8::1 198.51.100.1 40112 443\r\n', /not IPv4/],
    ['PROXY TCP6 192.0.2.7 2001:db8::1 40112 443\r\n', /not IPv6/],
    ['PROXY TCP6 fe80::1%eth0 2001:db8::1 40112 443\r\n', /not IPv6/],
    ['PROXY TCP4 192.0.2.07 198.51.100.1 40112 443\r\n', /not IPv4/],
    ['PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n', /port/],
    ['PROXY TCP4 192.0.2.7 198.51.100.1 040112 443\r\n', /port/],
    ['PROXY TCP4 192.0.2.7 198.51.100.1 -1 443\r\n', /port/],
    ['PROXY TCP4 192.0.2.7 198.51.100.1 40112 443\n', /byte 0x0a/],
    ['PROXY TCP4 192.0.2.7\x00 198.51.100.1 40112 443\r\n', /byte 0x00/],
    ['PROXY TCP4 192.0.2.7 198.51.100.1 40112 443\r\r\n', /byte 0x0d|control/],
    [`PROXY UNKNOWN ${'x'.repeat(200)}\r\n`, /longer than 107 bytes/],
  ];
  for (const [line, why] of cases) t.match(parseProxyHeader(v1(line)), { malformed: why }, JSON.stringify(line));
  t.match(parseProxyHeader(v1(`PROXY TCP4 ${'1'.repeat(120)}`)), { malformed: /longer than 107/ }, 'no CRLF in 107 bytes: refused without waiting for more');
});

t.test('v2: INET and INET6 with TLVs, LOCAL, and the bytes after the header left alone', async (t) => {
  const four = proxyV2({ source: ['192.0.2.7', 40112], destination: ['198.51.100.1', 443], tlvs: [[0x04, Buffer.alloc(0)], [0xea, Buffer.from('vpce-0123')]] });
  t.same(parseProxyHeader(Buffer.concat([four, hello])), {
    proxied: { source: { address: '192.0.2.7', port: 40112 }, destination: { address: '198.51.100.1', port: 443 } },
    version: 2,
    length: four.length,
  });
  const six = proxyV2({ source: ['2001:db8::1', 1], destination: ['::ffff:192.0.2.1', 2] });
  t.match(parseProxyHeader(six), { proxied: { source: { address: '2001:db8::1', port: 1 }, destination: { address: '::ffff:192.0.2.1', port: 2 } }, length: 16 + 36 });
  t.same(parseProxyHeader(Buffer.concat([V2_LOCAL, hello])), { local: true, length: 16 }, "HAProxy's health check");
  const localWithBody = proxyV2({ command: 0, source: ['192.0.2.7', 1], destination: ['192.0.2.8', 2] });
  t.same(parseProxyHeader(localWithBody), { local: true, length: localWithBody.length }, 'LOCAL ignores whatever addresses it carries');
  for (let n = 1; n < four.length; n++) t.same(parseProxyHeader(four.subarray(0, n)), { incomplete: true }, `cut at ${n} bytes: incomplete`);
});

t.test('v2: malformed, oversized and unservable headers are refused', async (t) => {
  const base = (): Buffer => proxyV2({ source: ['192.0.2.7', 40112], destination: ['198.51.100.1', 443] });
  const patched = (offset: number, byte: number): Buffer => {
    const copy = Buffer.from(base());
    copy[offset] = byte;
    return copy;
  };
  t.match(parseProxyHeader(patched(12, 0x11)), { malformed: /version 1/ }, 'version 1 in a v2 block');
  t.match(parseProxyHeader(patched(12, 0x22)), { malformed: /command 2/ });
  t.match(parseProxyHeader(patched(13, 0x01)), { malformed: /UNSPEC\/STREAM client/ }, 'PROXY with AF_UNSPEC: no client to name');
  t.match(parseProxyHeader(proxyV2({ family: 0x31, raw: Buffer.alloc(216) })), { malformed: /UNIX\/STREAM client/ });
  t.match(parseProxyHeader(patched(13, 0x12)), { malformed: /INET\/DGRAM client/ });
  t.match(parseProxyHeader(patched(13, 0x51)), { malformed: /family 5/ });
  t.match(parseProxyHeader(proxyV2({ family: 0x21, raw: Buffer.alloc(20) })), { malformed: /20 address bytes, fewer than 36/ });
  const huge = Buffer.from(base());
  huge.writeUInt16BE(0xffff, 14);
  t.match(parseProxyHeader(huge.subarray(0, 16)), { malformed: /65551 bytes, more than the 2064/ }, 'an oversized length is refused from the fixed part alone');
  t.equal(MAX_HEADER_BYTES, 2064);
  t.match(parseProxyHeader(proxyV2({ source: ['192.0.2.7', 1], destination: ['192.0.2.8', 2], tlvs: [[0x01, Buffer.alloc(4)]], trailing: Buffer.from([0x02, 0x00]) })), { malformed: /truncated TLV/ });
  const overrun = proxyV2({ source: ['192.0.2.7', 1], destination: ['192.0.2.8', 2], trailing: Buffer.from([0x02, 0x00, 0x09, 0x61]) });
  t.match(parseProxyHeader(overrun), { malformed: /TLV \(type 0x02\) of 9 bytes that runs past the header/ });
  t.match(parseProxyHeader(Buffer.from('\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c', 'latin1')), { malformed: /no PROXY header/ });
});

t.test('anything else is no header, and says what it looks like', async (t) => {
  t.match(parseProxyHeader(hello), { malformed: /starts with a TLS handshake/ });
  t.match(parseProxyHeader(Buffer.from('GET / HTTP/1.1\r\n')), { malformed: /starts with bytes 47 45 54 20/ });
  t.match(parseProxyHeader(Buffer.from('PROXZ')), { malformed: /no PROXY header/ });
  t.ok(looksLikeProxyHeader(Buffer.from('P')), 'one byte of either signature is enough to tell it from TLS');
  t.ok(looksLikeProxyHeader(Buffer.from('\r\n')));
  t.notOk(looksLikeProxyHeader(hello));
  t.notOk(looksLikeProxyHeader(Buffer.alloc(0)));
});

t.test('--accept-proxy: addresses and CIDR ranges, IPv4 matching its mapped form', async (t) => {
  const trusted = TrustedProxies.parse('127.0.0.10, 10.0.0.0/8,2001:db8::/32,::1');
  if ('error' in trusted) throw new Error(trusted.error);
  for (const address of ['127.0.0.10', '::ffff:127.0.0.10', '10.200.3.4', '::ffff:10.1.1.1', '2001:db8:ffff::1', '::1']) t.ok(trusted.has(address), `${address} is trusted`);
  for (const address of ['127.0.0.11', '11.0.0.1', '2001:db9::1', '::2', '', undefined]) t.notOk(trusted.has(address), `${String(address)} is not`);
  const both = trusted.with(TrustedProxies.parse('192.0.2.0/24') as TrustedProxies);
  t.ok(both.has('192.0.2.200') && both.has('127.0.0.10'), 'given twice, the lists add up');
  const refused: Array<[string, RegExp]> = [
    ['', /not an IP address/],
    ['127.0.0.10,,127.0.0.11', /"" is not an IP address/],
    ['balancer.example', /not an IP address/],
    ['10.0.0.0/33', /0 to 32/],
    ['2001:db8::/129', /0 to 128/],
    ['10.0.0.10/8', /bits set after its first 8/],
    ['2001:db8::1/64', /bits set after its first 64/],
    ['fe80::1%eth0', /not an IP address/],
    ['10.0.0.0/8/9', /not an IP address/],
  ];
  for (const [text, why] of refused) t.match(TrustedProxies.parse(text), { error: why }, JSON.stringify(text));
  t.notOk('error' in TrustedProxies.parse('0.0.0.0/0'), 'everyone, if the operator says so');
});
