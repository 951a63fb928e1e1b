import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { connectTls, readAll } from './lib/client.js';
import { freePort } from './lib/examples.js';
import { cast, countMatches, quietSyslog, rawConnect, realClientHello, settledStatus, waitUntil, watchClose, withDeadline } from './lib/limits-faults.js';
import { proxiedTls, proxyV1, proxyV2, V2_LOCAL } from './lib/proxy-protocol.js';
import { bin, startTlsd, watch, type RunningTlsd } from './lib/tlsd.js';
import { resetSocket } from './lib/tcp-reset.js';

// tlsd behind a balancer: --accept-proxy. The balancer here is a pretend one, a client that
// connects from 127.0.0.10 and writes a PROXY header; test/example-cluster.ts runs HAProxy itself.

const { server, alice, bob } = cast(t);
const BALANCER = '127.0.0.10';
/** Each child says who it thinks its peer is, then echoes. */
const REPORT = ['sh', '-c', 'echo "$TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALPORT ${PROXYREMOTEIP-none} ${PROXYREMOTEPORT-none} ${PROXYLOCALIP-none} ${PROXYLOCALPORT-none} ${SHA256-none}"; exec cat'];
const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

async function startBehindBalancer(t: Test, options: string[] = []): Promise<RunningTlsd> {
  return startTlsd(t, { identity: server, command: REPORT, env: quietSyslog, options: ['--accept-proxy', `${BALANCER},::1`, ...options] });
}

/** The child's first line, then its echo of `input`, through an established TLS socket. */
async function converse(socket: Awaited<ReturnType<typeof connectTls>>, input: string): Promise<{ report: string[]; echo: string }> {
  const reply = readAll(socket);
  socket.end(input);
  const text = (await reply).toString();
  const newline = text.indexOf('\n');
  return { report: text.slice(0, newline).split(' '), echo: text.slice(newline + 1) };
}

/** Lines of the log that name this balancer connection (by its port). */
function linesAbout(tlsd: RunningTlsd, from: string, port: number): string[] {
  return tlsd.stderr().split('\n').filter((line) => line.includes(`${from}:${port}:`));
}

t.test('a v1 or v2 header from the balancer names the peer: environment, log lines, SIGUSR1', async (t) => {
  const tlsd = await startBehindBalancer(t);
  await tlsd.waitFor(/Reading PROXY headers from 127\.0\.0\.10, ::1, and only from there/);
  const cases = [
    { name: 'v1, its own write', header: proxyV1(['192.0.2.7', 40112], ['198.51.100.1', 443]), separately: true, client: '192.0.2.7', label: '192.0.2.7:40112', local: '198.51.100.1 443' },
    { name: 'v1, in one write with the ClientHello', header: proxyV1(['192.0.2.8', 40113], ['198.51.100.1', 443]), separately: false, client: '192.0.2.8', label: '192.0.2.8:40113', local: '198.51.100.1 443' },
    {
      name: 'v2 INET6 with TLVs, in one write with the ClientHello',
      header: proxyV2({ source: ['2001:db8::7', 50000], destination: ['2001:db8::1', 443], tlvs: [[0x04, Buffer.alloc(5)], [0xea, Buffer.from('vpce-1')]] }),
      separately: false,
      client: '2001:db8::7',
      label: '[2001:db8::7]:50000',
      local: '2001:db8::1 443',
    },
    { name: 'v2 INET, IPv4-mapped client', header: proxyV2({ source: ['::ffff:192.0.2.9', 1234], destination: ['::ffff:198.51.100.1', 443] }), separately: true, client: '192.0.2.9', label: '[::ffff:192.0.2.9]:1234', local: '198.51.100.1 443' },
  ];
  for (const c of cases) {
    const socket = await proxiedTls(t, tlsd.port, { from: BALANCER, header: c.header, separately: c.separately, identity: alice });
    const { report, echo } = await converse(socket, `hello from ${c.client}\n`);
    t.equal(echo, `hello from ${c.client}\n`, `${c.name}: every byte after the header reached the child and came back`);
    t.equal(report[0], c.client, `${c.name}: TCPREMOTEIP is the client's address (IPv4-mapped written as IPv4)`);
    t.equal(report[1], c.label.replace(/.*:/, ''), `${c.name}: TCPREMOTEPORT is the client's port`);
    t.equal(`${report[2]} ${report[3]}`, c.local, `${c.name}: TCPLOCALIP and TCPLOCALPORT are what the client connected to, as s6's proxy-server sets them`);
    t.equal(report[4], BALANCER, `${c.name}: PROXYREMOTEIP is the balancer`);
    t.match(report[5], /^\d+$/, `${c.name}: PROXYREMOTEPORT is its port`);
    t.equal(`${report[6]} ${report[7]}`, `127.0.0.1 ${tlsd.port}`, `${c.name}: PROXYLOCALIP and PROXYLOCALPORT are where tlsd accepted it`);
    t.equal(report[8], alice.fingerprint, `${c.name}: SHA256 is the peer's, TLS being end to end`);
    const label = `${c.label} via ${BALANCER}:${report[5]}`;
    await tlsd.waitFor(new RegExp(`${escape(label)}: connected as SERVER, peer SHA256 ${alice.fingerprint}`));
    await tlsd.waitFor(new RegExp(`${escape(label)}: session ended`));
  }

  // A session open while SIGUSR1 asks: its row names the client and the balancer.
  const open = await proxiedTls(t, tlsd.port, { from: BALANCER, header: proxyV1(['192.0.2.99', 4242], ['198.51.100.1', 443]), identity: bob });
  await tlsd.waitFor(/192\.0\.2\.99:4242 via 127\.0\.0\.10:\d+: started child/);
  t.same(await settledStatus(tlsd, { peers: 1, handshakes: 0 }), { peers: 1, handshakes: 0 });
  t.match(tlsd.stderr(), new RegExp(`SERVER 192\\.0\\.2\\.99:4242 via 127\\.0\\.0\\.10:\\d+ SHA256 ${bob.fingerprint}, child \\d+`), "SIGUSR1's row names the client, and the balancer it came through");
  open.end();

  // From anywhere else, a client is served as itself, with no PROXY variables.
  const direct = await connectTls(tlsd.port, alice, { localAddress: '127.0.0.20' });
  const directPort = direct.localPort;
  const { report } = await converse(direct, 'direct\n');
  t.same(report.slice(0, 8), ['127.0.0.20', String(directPort), '127.0.0.1', String(tlsd.port), 'none', 'none', 'none', 'none'], 'a direct client: its own address, no PROXY variables');
});

t.test('the balancer over IPv6 (::1), and on a socket passed by systemd', async (t) => {
  const tlsd = await startBehindBalancer(t, ['-b', '::1']);
  t.match(tlsd.stderr(), /Listening on ::1, port/);
  const socket = await proxiedTlsAt(t, '::1', tlsd.port, proxyV2({ source: ['192.0.2.7', 1000], destination: ['192.0.2.1', 443] }));
  const { report } = await converse(socket, '');
  t.same([report[0], report[1], report[4]], ['192.0.2.7', '1000', '::1'], 'an IPv6 balancer, an IPv4 client');

  const port = await freePort();
  const proc = spawn('systemd-socket-activate', ['-l', `127.0.0.1:${port}`, '-E', 'PATH', '-E', 'TLSD_SYSLOG_SOCKET', bin('tlsd'), '-e', '-k', server.key, '-c', server.cert, '--accept-proxy', BALANCER, '--', ...REPORT], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...quietSyslog },
  });
  const activated = watch(proc);
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await activated.exited;
    }
  });
  await activated.waitFor(new RegExp(`Listening on 127\\.0\\.0\\.1:${port} as 3`));
  const passed = await proxiedTls(t, port, { from: BALANCER, header: proxyV1(['192.0.2.44', 4444], ['192.0.2.1', 443]), identity: alice, ms: 20_000 });
  const served = await converse(passed, 'activated\n');
  t.same([served.report[0], served.report[1], served.echo], ['192.0.2.44', '4444', 'activated\n'], 'socket activation: the first connection, waiting in the backlog, is read the same way');
});

/** proxiedTls from a balancer at `from` to tlsd at `host` (for ::1). */
async function proxiedTlsAt(t: Test, host: string, port: number, header: Buffer): Promise<Awaited<ReturnType<typeof connectTls>>> {
  const { connect } = await import('node:net');
  const { connect: tlsConnect } = await import('node:tls');
  const { readFileSync } = await import('node:fs');
  const raw = connect({ host, port });
  t.teardown(() => void raw.destroy());
  await new Promise((resolve, reject) => raw.once('connect', resolve).once('error', reject));
  raw.write(header);
  const socket = tlsConnect({ socket: raw, rejectUnauthorized: false, key: readFileSync(alice.key), cert: readFileSync(alice.cert) });
  await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  return socket;
}

interface Hostile {
  name: string;
  /** Written in order, `gapMs` apart. */
  chunks: Buffer[];
  gapMs?: number;
  /** Silence before the first chunk. */
  delayMs?: number;
  /** Half-close after the last chunk. */
  end?: boolean;
  /** Reset (RST) after the last chunk, as HAProxy ends its health checks. */
  reset?: boolean;
  from?: string;
  /** The one log line this connection gets (null: none at all). */
  line: RegExp | null;
}

t.test('hostile and broken preambles: one log line each, a closed connection, no slot held, tlsd unharmed', async (t) => {
  const timeout = 3;
  const tlsd = await startBehindBalancer(t, ['--handshake-timeout', String(timeout)]);
  const hello = await realClientHello();
  const header = proxyV1(['192.0.2.7', 40112], ['198.51.100.1', 443]);
  const v2 = proxyV2({ source: ['192.0.2.7', 1], destination: ['192.0.2.1', 2] });
  const withLength = (bytes: Buffer, length: number): Buffer => {
    const copy = Buffer.from(bytes);
    copy.writeUInt16BE(length, 14);
    return copy;
  };
  const cases: Hostile[] = [
    { name: 'a header from an address not in --accept-proxy', from: '127.0.0.20', chunks: [Buffer.concat([header, hello])], line: /connection refused: a PROXY header from an address not in --accept-proxy/ },
    { name: 'a v2 header from an address not in --accept-proxy', from: '127.0.0.20', chunks: [v2], line: /connection refused: a PROXY header from an address not in --accept-proxy/ },
    { name: 'no header from the balancer (a ClientHello at once)', chunks: [hello], line: /connection refused: no PROXY header: the connection starts with a TLS handshake \(is the balancer set to send-proxy-v2\?\)/ },
    { name: 'v2 LOCAL (a health check)', chunks: [V2_LOCAL], line: null },
    { name: 'v2 LOCAL, then reset as HAProxy does', chunks: [V2_LOCAL], reset: true, line: null },
    { name: 'v1 UNKNOWN', chunks: [Buffer.from('PROXY UNKNOWN\r\n')], line: null },
    { name: 'v1 with a bad address', chunks: [Buffer.from('PROXY TCP4 192.0.2.300 198.51.100.1 1 2\r\n')], line: /connection refused: PROXY v1 TCP4 line with an address that is not IPv4/ },
    { name: 'v1 longer than 107 bytes', chunks: [Buffer.from(`PROXY TCP4 ${'9'.repeat(200)}\r\n`)], line: /connection refused: PROXY v1 line longer than 107 bytes/ },
    { name: 'v1 with a NUL', chunks: [Buffer.from('PROXY TCP4 1.2.3.4\0')], line: /connection refused: PROXY v1 line with byte 0x00 at offset 18/ },
    { name: 'v2 with an unknown command', chunks: [Buffer.concat([v2.subarray(0, 12), Buffer.from([0x2f]), v2.subarray(13)])], line: /connection refused: PROXY v2 header with command 15/ },
    { name: 'v2 UNSPEC with PROXY', chunks: [proxyV2({ family: 0x00, raw: Buffer.alloc(0) })], line: /connection refused: PROXY v2 header for a UNSPEC\/UNSPEC client/ },
    { name: 'v2 UNIX', chunks: [proxyV2({ family: 0x31, raw: Buffer.alloc(216) })], line: /connection refused: PROXY v2 header for a UNIX\/STREAM client/ },
    { name: 'v2 oversized (length 65535)', chunks: [withLength(v2, 65535)], line: /connection refused: PROXY v2 header of 65551 bytes, more than the 2064 tlsd reads/ },
    { name: 'v2 with a TLV running past the end', chunks: [proxyV2({ source: ['192.0.2.7', 1], destination: ['192.0.2.1', 2], trailing: Buffer.from([0x20, 0x01, 0x00]) })], line: /connection refused: PROXY v2 header with a TLV \(type 0x20\) of 256 bytes that runs past the header/ },
    { name: 'v1 truncated, then FIN', chunks: [header.subarray(0, 20)], end: true, line: /closed after 20 byte\(s\), before a whole PROXY header/ },
    { name: 'v2 truncated (the length says more), then FIN', chunks: [Buffer.concat([withLength(v2, 40), Buffer.alloc(12)]).subarray(0, 30)], end: true, line: /closed after 30 byte\(s\), before a whole PROXY header/ },
    { name: 'v1 dribbled, a byte every 300 ms', chunks: [...header].map((b) => Buffer.from([b])), gapMs: 300, line: /connection refused: no whole PROXY header within 3 s/ },
    { name: 'a header after 2 s, then no TLS', chunks: [header], delayMs: 2_000, line: /TLS handshake has failed: TLS handshake timeout/ },
    { name: 'nothing at all from the balancer', chunks: [], line: /connection refused: no whole PROXY header within 3 s/ },
    { name: 'nothing at all from a direct client', from: '127.0.0.20', chunks: [], line: /TLS handshake has failed: TLS handshake timeout/ },
  ];
  const started = await Promise.all(
    cases.map(async (c) => {
      const from = c.from ?? BALANCER;
      const socket: Socket = await rawConnect(t, tlsd.port, { from });
      const watch = watchClose(socket);
      void (async () => {
        if (c.delayMs) await sleep(c.delayMs);
        for (const chunk of c.chunks) {
          if (watch.closed) return;
          socket.write(chunk);
          if (c.gapMs) await sleep(c.gapMs);
        }
        if (c.end && !watch.closed) socket.end();
        if (c.reset) resetSocket(socket);
      })();
      return { c, from, port: socket.localPort!, watch, opened: Date.now() };
    }),
  );
  for (const { c, watch } of started) await withDeadline(watch.done, 15_000, `${c.name}: tlsd closes the connection`);
  t.pass('every one of them was closed by tlsd');
  // Lines may follow the close by a moment: wait for the last expected, then count.
  for (const { c, from, port } of started) {
    if (c.line) await waitUntil(() => linesAbout(tlsd, from, port).some((line) => c.line!.test(line)), `${c.name}: its line`, tlsd);
  }
  t.same(await settledStatus(tlsd, { peers: 0, handshakes: 0 }), { peers: 0, handshakes: 0 }, 'SIGUSR1: no handshake slot is held by any of them');
  for (const { c, from, port } of started) {
    const lines = linesAbout(tlsd, from, port);
    if (c.line) t.equal(lines.length, 1, `${c.name}: one line: ${lines.join(' | ')}`);
    else t.same(lines, [], `${c.name}: closed without a word`);
    if (c.line && lines[0]) t.match(lines[0], c.line, `${c.name}: says what was wrong`);
  }
  // The header counts against the handshake deadline: a header after 2 s leaves 1 s for TLS, not a fresh 3 s.
  const late = started.find((s) => s.c.name.startsWith('a header after 2 s'))!;
  const lasted = late.watch.closedAt! - late.opened;
  t.ok(lasted < (timeout + 1.5) * 1000, `header and handshake share one deadline: closed after ${lasted} ms (with a fresh deadline for TLS, about ${2 + timeout} s)`);
  t.equal(countMatches(tlsd.stderr(), /\n\s+at /), 0, 'no stack trace');

  const socket = await proxiedTls(t, tlsd.port, { from: BALANCER, header, identity: alice });
  t.equal((await converse(socket, 'still here\n')).echo, 'still here\n', 'tlsd serves the next balanced client as before');
});

t.test('a header dribbled within the deadline is read, and the client served', async (t) => {
  const tlsd = await startBehindBalancer(t);
  const header = proxyV2({ source: ['192.0.2.55', 5555], destination: ['192.0.2.1', 443], tlvs: [[0x03, Buffer.alloc(4)]] });
  const { connect } = await import('node:net');
  const raw = connect({ host: '127.0.0.1', port: tlsd.port, localAddress: BALANCER });
  t.teardown(() => void raw.destroy());
  await new Promise((resolve) => raw.once('connect', resolve));
  for (const byte of header) {
    raw.write(Buffer.from([byte]));
    await sleep(5);
  }
  const { connect: tlsConnect } = await import('node:tls');
  const { readFileSync } = await import('node:fs');
  const socket = tlsConnect({ socket: raw, rejectUnauthorized: false, key: readFileSync(alice.key), cert: readFileSync(alice.cert) });
  await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const { report, echo } = await converse(socket, 'bytewise\n');
  t.same([report[0], report[1], echo], ['192.0.2.55', '5555', 'bytewise\n'], `${header.length} bytes one at a time: the client is named and served`);
});

t.test('--max-per-ip counts the client the header names, not the balancer', async (t) => {
  const tlsd = await startBehindBalancer(t, ['--max-per-ip', '1']);
  const first = await proxiedTls(t, tlsd.port, { from: BALANCER, header: proxyV1(['192.0.2.7', 1001], ['192.0.2.1', 443]), identity: alice });
  await tlsd.waitFor(/192\.0\.2\.7:1001 via 127\.0\.0\.10:\d+: started child/);
  // A second connection of the same client: refused, though the first is open.
  const again = await rawConnect(t, tlsd.port, { from: BALANCER });
  const closed = watchClose(again);
  again.write(proxyV1(['192.0.2.7', 1002], ['192.0.2.1', 443]));
  await withDeadline(closed.done, 10_000, 'the second connection of 192.0.2.7 is closed');
  await tlsd.waitFor(/192\.0\.2\.7:1002 via 127\.0\.0\.10:\d+: connection refused: too many connections from 192\.0\.2\.7 \(1\)/);
  // Another client of the same balancer is not held back by the first.
  const other = await proxiedTls(t, tlsd.port, { from: BALANCER, header: proxyV1(['192.0.2.8', 1003], ['192.0.2.1', 443]), identity: bob });
  t.equal((await converse(other, 'other\n')).echo, 'other\n', 'another client through the same balancer is served: the balancer is not one address');
  t.equal((await converse(first, 'first\n')).echo, 'first\n', 'and the first session goes on');
});

t.test('handshake slots: one client behind the balancer cannot keep its other clients out', async (t) => {
  const slots = 4;
  const tlsd = await startBehindBalancer(t, ['--max-handshakes', String(slots), '--handshake-timeout', '60']);
  // 192.0.2.66 opens every slot through the balancer: headers, then silence.
  const hogs: ReturnType<typeof watchClose>[] = [];
  for (let i = 0; i < slots; i++) {
    const socket = await rawConnect(t, tlsd.port, { from: BALANCER });
    socket.write(proxyV1(['192.0.2.66', 6000 + i], ['192.0.2.1', 443]));
    hogs.push(watchClose(socket));
  }
  t.same(await settledStatus(tlsd, { peers: 0, handshakes: slots }), { peers: 0, handshakes: slots }, `${slots} handshakes of 192.0.2.66 in progress`);
  const other = await proxiedTls(t, tlsd.port, { from: BALANCER, header: proxyV1(['192.0.2.8', 8000], ['192.0.2.1', 443]), identity: alice, ms: 20_000 });
  t.equal((await converse(other, 'fair\n')).echo, 'fair\n', 'another client of the balancer is served at once');
  await waitUntil(() => hogs.filter((h) => h.closed).length === 1, 'one handshake of 192.0.2.66 made room', tlsd);
  await tlsd.waitFor(/192\.0\.2\.66:600\d via 127\.0\.0\.10:\d+: handshake evicted to make room for 127\.0\.0\.10:\d+: 192\.0\.2\.66 held the most pending handshakes \(4 of 4\)/);
});

t.test('--accept-proxy refuses what is not an address or a range, in one line', async (t) => {
  for (const [value, why] of [
    ['balancer.example', /"balancer\.example" is not an IP address or an address\/prefix range/],
    ['10.0.0.10/8', /"10\.0\.0\.10\/8" has bits set after its first 8/],
  ] as const) {
    const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog, options: ['--accept-proxy', value], listening: false });
    t.equal(await tlsd.exited, 1, `${value}: exit status 1`);
    t.match(tlsd.stderr(), why);
    t.notMatch(tlsd.stderr(), /\n\s+at /, 'no stack trace');
  }
});
