import { spawn } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { fileAppears } from './lib/text.js';
import { chooseProxy, parseProxyAddress } from '../src/input/proxy-url.js';
import { ipv6Bytes } from '../src/core/socks5.js';
import { makeIdentity, tempDir } from './lib/identity.js';
import { runProgram } from './lib/run.js';
import { startTlsd, type RunningTlsd, type Teardown } from './lib/tlsd.js';

const dir = tempDir();
const server = makeIdentity(dir, 'server');
const dialer = makeIdentity(dir, 'dialer');
// Tests choose their proxy themselves; one set in the environment running them must not leak in.
const env = { ALL_PROXY: undefined, all_proxy: undefined, TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log' };


interface SocksRequest {
  atyp: number;
  host: string;
  port: number;
}

interface RecordingProxy {
  port: number;
  requests: SocksRequest[];
}

/**
 * A small SOCKS5 server (no authentication, CONNECT) that records each request as it came and
 * relays to 127.0.0.1 at the requested port, or at `routes[name]` for a name listed there. Names
 * listed in `replies` get that reply code instead; those in `silent`, no reply at all. It never
 * resolves a name: what it records is what the client sent.
 */
async function startRecordingProxy(t: Teardown, how: { port?: number; routes?: Record<string, number>; replies?: Record<string, number>; silent?: string[] } = {}): Promise<RecordingProxy> {
  const requests: SocksRequest[] = [];
  const sockets = new Set<Socket>();
  const proxy: Server = createServer({ allowHalfOpen: true }, (client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    let buffer = Buffer.alloc(0);
    let stage: 'greeting' | 'request' | 'relay' = 'greeting';
    const onData = (chunk: Buffer): void => {
      buffer = Buffer.concat([buffer, chunk]);
      if (stage === 'greeting') {
        if (buffer.length < 2 || buffer.length < 2 + buffer[1]!) return;
        const methods = [...buffer.subarray(2, 2 + buffer[1]!)];
        buffer = buffer.subarray(2 + buffer[1]!);
        client.write(Buffer.from([5, methods.includes(0) ? 0 : 0xff]));
        stage = 'request';
      }
      if (stage !== 'request' || buffer.length < 5) return;
      const atyp = buffer[3]!;
      const addressLength = atyp === 1 ? 4 : atyp === 4 ? 16 : 1 + buffer[4]!;
      if (buffer.length < 4 + addressLength + 2) return;
      const address = buffer.subarray(4, 4 + addressLength);
      const host = atyp === 1 ? [...address].join('.') : atyp === 4 ? address.toString('hex').replace(/(....)(?!$)/g, '$1:') : address.subarray(1).toString('latin1');
      const port = buffer.readUInt16BE(4 + addressLength);
      requests.push({ atyp, host, port });
      const rest = buffer.subarray(4 + addressLength + 2);
      stage = 'relay';
      client.off('data', onData);
      client.pause();
      if (how.silent?.includes(host)) return;
      const reply = (code: number): boolean => client.write(Buffer.from([5, code, 0, 1, 127, 0, 0, 1, 0, 0]));
      const code = how.replies?.[host];
      if (code !== undefined) {
        reply(code);
        client.end();
        return;
      }
      const upstream = connect({ host: '127.0.0.1', port: how.routes?.[host] ?? port, allowHalfOpen: true });
      sockets.add(upstream);
      upstream.on('close', () => sockets.delete(upstream));
      upstream.on('error', () => {
        if (stage === 'relay' && upstream.connecting) reply(5);
        client.destroy();
      });
      upstream.once('connect', () => {
        reply(0);
        if (rest.length > 0) upstream.write(rest);
        client.pipe(upstream);
        upstream.pipe(client);
      });
    };
    client.on('data', onData);
  });
  proxy.listen(how.port ?? 0, '127.0.0.1');
  await once(proxy, 'listening');
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
    proxy.close();
  });
  return { port: (proxy.address() as AddressInfo).port, requests };
}

/** A port nothing listens on (just now). */
async function freePort(): Promise<number> {
  const probe = createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as AddressInfo;
  probe.close();
  await once(probe, 'close');
  return port;
}

/** Resolves once something accepts on 127.0.0.1:port; bounded. */
async function listening(port: number, ms = 5_000): Promise<void> {
  for (let waited = 0; waited < ms; waited += 50) {
    const ok = await new Promise<boolean>((resolve) => {
      const probe = connect({ host: '127.0.0.1', port }, () => {
        probe.destroy();
        resolve(true);
      });
      probe.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on port ${port} after ${ms} ms`);
}

interface Dialer {
  tlsd: RunningTlsd;
  /** Writes a dial line; resolves with what its child recorded: the server's first line, then `$SIDE $SHA256`. */
  dial(line: string): Promise<string>;
}

/** A dialing tlsd; each child records what it saw in a file of its own (named by its pid). */
async function startDialer(t: Teardown, options: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Dialer> {
  const out = tempDir();
  const tlsd = await startTlsd(t, {
    identity: dialer,
    stdin: 'pipe',
    options,
    env: { ...env, ...extraEnv },
    command: ['sh', '-c', `{ head -n 1; echo "$SIDE $SHA256"; } > "${out}/$$.tmp"; mv "${out}/$$.tmp" "${out}/$$"`],
  });
  return {
    tlsd,
    async dial(line, ms = 10_000) {
      const before = new Set(readdirSync(out));
      tlsd.proc.stdin!.write(`${line}\n`);
      for (let waited = 0; waited < ms; waited += 50) {
        const added = readdirSync(out).find((name) => !name.endsWith('.tmp') && !before.has(name));
        if (added) return readFileSync(join(out, added), 'utf8');
        await sleep(50);
      }
      throw new Error(`no child recorded anything for ${JSON.stringify(line)} within ${ms} ms:\n${tlsd.stderr()}`);
    },
  };
}

t.test('parseProxyAddress: HOST:PORT or [IPv6]:PORT, nothing else', async (t) => {
  t.same(parseProxyAddress('127.0.0.1:9050'), { host: '127.0.0.1', port: 9050 });
  t.same(parseProxyAddress('localhost:1080'), { host: 'localhost', port: 1080 });
  t.same(parseProxyAddress('[::1]:9050'), { host: '::1', port: 9050 });
  t.same(parseProxyAddress('proxy.example:65535'), { host: 'proxy.example', port: 65535 });
  for (const bad of ['nohost', 'host:', ':9050', 'host:0', 'host:65536', 'host:port', '::1:9050', '[nohost]:1', '[::1]', 'a b:1', 'socks5h://127.0.0.1:9050', '']) {
    t.equal(parseProxyAddress(bad), undefined, JSON.stringify(bad));
  }
});

t.test('chooseProxy: --socks first, then a socks ALL_PROXY; anything else ignored with a reason', async (t) => {
  const tor = { host: '127.0.0.1', port: 9050 };
  t.same(chooseProxy(tor, { ALL_PROXY: 'socks5h://10.0.0.1:1080' }), { proxy: tor }, '--socks wins');
  t.same(chooseProxy(tor, { ALL_PROXY: 'http://x:1' }), { proxy: tor }, '--socks wins, nothing to ignore');
  t.same(chooseProxy(undefined, {}), {}, 'none');
  t.same(chooseProxy(undefined, { ALL_PROXY: '' }), {}, 'empty');
  t.same(chooseProxy(undefined, { ALL_PROXY: 'socks5h://127.0.0.1:9050' }), { proxy: tor });
  t.same(chooseProxy(undefined, { ALL_PROXY: 'socks5://127.0.0.1:9050/' }), { proxy: tor }, 'socks5:// and a trailing slash');
  t.same(chooseProxy(undefined, { ALL_PROXY: 'SOCKS://127.0.0.1:9050' }), { proxy: tor }, 'socks://, any case');
  t.same(chooseProxy(undefined, { all_proxy: ' socks5h://[::1]:9050 ' }), { proxy: { host: '::1', port: 9050 } }, 'all_proxy, IPv6');
  t.same(chooseProxy(undefined, { ALL_PROXY: 'socks5h://127.0.0.1:9050', all_proxy: 'socks5h://10.0.0.1:1' }), { proxy: tor }, 'ALL_PROXY before all_proxy');
  t.same(chooseProxy(undefined, { ALL_PROXY: 'http://x:1' }), { ignored: 'ALL_PROXY=http://x:1: tlsd uses SOCKS5 proxies only, as socks5h://HOST:PORT' });
  t.same(chooseProxy(undefined, { all_proxy: 'socks4://x:1' }), { ignored: 'all_proxy=socks4://x:1: tlsd uses SOCKS5 proxies only, as socks5h://HOST:PORT' });
  t.same(chooseProxy(undefined, { ALL_PROXY: 'socks5h://user:pw@x:1' }).proxy, undefined, 'credentials are not supported');
});

t.test('ipv6Bytes: the 16 bytes of ATYP 4', async (t) => {
  t.equal(ipv6Bytes('::1').toString('hex'), '00000000000000000000000000000001');
  t.equal(ipv6Bytes('::').toString('hex'), '0'.repeat(32));
  t.equal(ipv6Bytes('2001:db8::8:800:200c:417a').toString('hex'), '20010db8000000000008080020' + '0c417a');
  t.equal(ipv6Bytes('fe80::').toString('hex'), 'fe80' + '0'.repeat(28));
  t.equal(ipv6Bytes('1:2:3:4:5:6:7:8').toString('hex'), '00010002000300040005000600070008');
  t.equal(ipv6Bytes('::ffff:192.0.2.1').toString('hex'), '00000000000000000000ffffc0000201');
  t.throws(() => ipv6Bytes('fe80::1%eth0'), /scoped/);
});

t.test('--socks: names reach the proxy unresolved (ATYP 3), addresses as ATYP 1 and 4; SNI as direct', async (t) => {
  const acceptor = await startTlsd(t, { identity: server, env, command: ['sh', '-c', 'echo "sni=$SSL_TLS_SNI_SERVERNAME"; cat >/dev/null'] });
  const onion = 'abcdefghijklmnop.onion';
  const proxy = await startRecordingProxy(t, { routes: { localhost: acceptor.port, [onion]: acceptor.port } });
  const { dial, tlsd } = await startDialer(t, ['--socks', `127.0.0.1:${proxy.port}`]);
  const expected = (sni: string): string => `sni=${sni}\nCLIENT ${server.fingerprint}\n`;

  t.equal(await dial(`localhost ${acceptor.port}`), expected('localhost'), 'connected through the proxy as CLIENT, with the SHA256 and SNI of a direct dial');
  t.same(proxy.requests[0], { atyp: 3, host: 'localhost', port: acceptor.port }, 'the proxy got the name, not an address');
  t.equal(await dial(`${onion} 5600`), expected(onion), 'a .onion name works: only the proxy knows where it goes');
  t.same(proxy.requests[1], { atyp: 3, host: onion, port: 5600 }, 'the .onion name reached the proxy unresolved');
  t.equal(await dial(`127.0.0.1 ${acceptor.port}`), expected(''), 'an IPv4 address');
  t.same(proxy.requests[2], { atyp: 1, host: '127.0.0.1', port: acceptor.port }, 'sent as ATYP 1, no SNI');
  t.equal(await dial(`[::1] ${acceptor.port}`), expected(''), 'an IPv6 address (relayed to 127.0.0.1 by the test proxy)');
  t.same(proxy.requests[3], { atyp: 4, host: '0000:0000:0000:0000:0000:0000:0000:0001', port: acceptor.port }, 'sent as ATYP 4');
  t.equal(await dial(`LocalHost. ${acceptor.port}`), expected('localhost'), 'a fully qualified name in capitals');
  t.same(proxy.requests[4], { atyp: 3, host: 'localhost', port: acceptor.port }, 'reached the proxy in its one form, as SNI has it');
  t.match(tlsd.stderr(), new RegExp(`Connecting to ${onion}, port 5600\\n[^]*${onion}:5600: connected as CLIENT, peer SHA256 ${server.fingerprint}`), 'logged under the name dialed');
});

t.test('microsocks carries a connection, half-close included: the server child replies after EOF', async (t) => {
  // microsocks connects to the first address the name has, as this process would find it.
  const { address } = await lookup('localhost');
  const acceptor = await startTlsd(t, { identity: server, env, options: ['-b', address], command: ['sh', '-c', 'wc -c'] });
  const port = await freePort();
  const microsocks = spawn('microsocks', ['-i', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let microsocksLog = '';
  microsocks.stderr.setEncoding('utf8').on('data', (chunk: string) => (microsocksLog += chunk));
  const spawnFailed = once(microsocks, 'error');
  t.teardown(() => void microsocks.kill('SIGKILL'));
  await Promise.race([listening(port), spawnFailed.then(([error]) => Promise.reject(new Error(`cannot run microsocks (installed by .ci/run): ${String(error)}`)))]);

  const out = tempDir();
  const tlsd = await startTlsd(t, {
    identity: dialer,
    stdin: 'pipe',
    options: ['--socks', `127.0.0.1:${port}`],
    env,
    // 100 kB out, then our side ends (close_notify), then the server's count comes back.
    command: ['sh', '-c', `head -c 100000 /dev/zero; exec >&-; cat > "${out}/reply.tmp"; mv "${out}/reply.tmp" "${out}/reply"`],
  });
  tlsd.proc.stdin!.write(`localhost ${acceptor.port}\n`);
  t.equal((await fileAppears(join(out, 'reply'))).trim(), '100000', 'every byte arrived, and the reply after EOF came back');
  await tlsd.waitFor(new RegExp(`localhost:${acceptor.port}: session ended`));
  t.match(microsocksLog, `connected to localhost:${acceptor.port}`, 'microsocks resolved the name itself');
});

t.test('ALL_PROXY=socks5h:// is used without --socks; http:// is ignored with a warning and the dial is direct', async (t) => {
  const acceptor = await startTlsd(t, { identity: server, env, command: ['sh', '-c', 'echo "sni=$SSL_TLS_SNI_SERVERNAME"; cat >/dev/null'] });
  const proxy = await startRecordingProxy(t);
  const viaEnv = await startDialer(t, [], { ALL_PROXY: `socks5h://127.0.0.1:${proxy.port}` });
  t.equal(await viaEnv.dial(`localhost ${acceptor.port}`), `sni=localhost\nCLIENT ${server.fingerprint}\n`);
  t.same(proxy.requests, [{ atyp: 3, host: 'localhost', port: acceptor.port }], 'through the proxy of ALL_PROXY');

  const ignoring = await startDialer(t, [], { ALL_PROXY: 'http://x:1' });
  t.match(ignoring.tlsd.stderr(), /^tlsd: Ignoring ALL_PROXY=http:\/\/x:1: tlsd uses SOCKS5 proxies only, as socks5h:\/\/HOST:PORT$/m, 'one warning line');
  t.equal(await ignoring.dial(`127.0.0.1 ${acceptor.port}`), `sni=\nCLIENT ${server.fingerprint}\n`, 'connected directly');
  t.equal(proxy.requests.length, 1, 'no proxy involved');
});

t.test('a proxy that refuses, fails or is not there: one clear line each, and stdin is still read', async (t) => {
  const acceptor = await startTlsd(t, { identity: server, env, command: ['sh', '-c', 'echo "sni=$SSL_TLS_SNI_SERVERNAME"; cat >/dev/null'] });
  const port = await freePort();
  const { dial, tlsd } = await startDialer(t, ['--socks', `127.0.0.1:${port}`, '--handshake-timeout', '1']);
  const label = `SOCKS5 proxy 127.0.0.1:${port}`;
  const failure = async (line: string, why: string): Promise<void> => {
    tlsd.proc.stdin!.write(`${line}\n`);
    const [host, dialPort] = line.split(' ') as [string, string];
    const [found] = await tlsd.waitFor(new RegExp(`^tlsd: Cannot connect to ${host}:${dialPort}: .*$`, 'm'));
    t.equal(found, `tlsd: Cannot connect to ${host}:${dialPort}: ${label}: ${why}`, why);
  };

  await failure(`localhost ${acceptor.port}`, 'connection refused (ECONNREFUSED)');
  // Now a proxy on that port, so that the same tlsd goes on through it.
  const proxy = await startRecordingProxy(t, { port, replies: { 'refused.example': 5, 'unreachable.example': 4, 'rules.example': 2 }, silent: ['silent.example'] });
  await failure('refused.example 1', 'connection refused (reply 5)');
  await failure('unreachable.example 2', 'host unreachable (reply 4)');
  await failure('rules.example 3', 'connection not allowed by ruleset (reply 2)');
  await failure('silent.example 4', 'no answer within 1 s');
  t.equal(await dial(`localhost ${acceptor.port}`), `sni=localhost\nCLIENT ${server.fingerprint}\n`, 'a later good line still connects');
  t.same(proxy.requests.map((request) => request.host), ['refused.example', 'unreachable.example', 'rules.example', 'silent.example', 'localhost']);
  t.equal(tlsd.proc.exitCode, null, 'tlsd runs on');
  t.notMatch(tlsd.stderr(), /\n\s+at /, 'no stack trace');
});

t.test('--socks with a bad value: one error line, exit 1', async (t) => {
  const values = ['nohost', '127.0.0.1:0', '::1:9050', 'socks5h://127.0.0.1:9050'];
  const results = await Promise.all(values.map((value) => runProgram('tlsd', ['-e', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, '--socks', value, 'cat'])));
  values.forEach((value, index) => {
    const result = results[index]!;
    t.equal(result.status, 1, `${value}: exit 1`);
    const errors = result.stderr.split('\n').filter((line) => /^(error|tlsd):/.test(line));
    t.equal(errors.length, 1, `${value}: one error line`, { stderr: result.stderr });
    t.match(errors[0], `'${value}' is invalid. expected HOST:PORT or [IPv6]:PORT.`);
    t.notMatch(result.stderr, /\n\s+at /, 'no stack trace');
  });
});
