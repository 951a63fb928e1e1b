import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConnectionOptions } from 'node:tls';
import { countMatches } from '../limits-faults.js';
import type { SoakCase } from './case.js';
import { eventually, settle, startSoakTlsd, track } from './daemon.js';
import { awaitEnded, labelOf, story } from './peer-log.js';
import { zooTlsd } from './faults-children.js';
import { warmUp } from './load.js';
import { SyslogSocket } from './syslog.js';
import { ALERT_PROTOCOL_VERSION, clientHello, firstAnswer, type ServerAnswer } from './tls-records.js';
import { clientOptions, converse, firstData, reportCanary, secureClient } from './traffic.js';

const describe = (answer: ServerAnswer): string => JSON.stringify(answer);

/** `openssl s_client` with the given protocol flags; resolves with its exit status and output. */
function opensslClient(port: number, flags: string[], identity: { key: string; cert: string } | undefined, input = ''): { status: number | null; output: string } {
  const result = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...(identity ? ['-key', identity.key, '-cert', identity.cert] : []), ...flags], { input, encoding: 'utf8', timeout: 15_000 });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

export const legacyProtocols: SoakCase = {
  id: 'security-tls-floor',
  title: 'TLS 1.2 is the floor: SSLv3, TLS 1.0 and 1.1 handshakes fail (raw hellos, openssl, Node); no compression',
  short: true,
  async run(ctx) {
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    // Raw ClientHellos: what the server answers, whatever the client library allows.
    const control = await firstAnswer(tlsd.port, clientHello({ version: 0x0303 }));
    ctx.check(control.kind === 'serverHello' && control.version === 0x0303, 'control: a hand-made TLS 1.2 ClientHello gets a TLS 1.2 ServerHello', describe(control));
    for (const [name, version] of [['SSLv3', 0x0300], ['TLS 1.0', 0x0301], ['TLS 1.1', 0x0302]] as const) {
      const answer = await firstAnswer(tlsd.port, clientHello({ version }));
      ctx.tries++;
      ctx.check(answer.kind === 'alert' && answer.level === 2, `${name}: answered with a fatal alert, no ServerHello`, describe(answer));
      if (answer.kind === 'alert') ctx.note(`${name}: alert ${answer.description}${answer.description === ALERT_PROTOCOL_VERSION ? ' (protocol_version)' : answer.description === 40 ? ' (handshake_failure)' : ''}`);
    }
    const compressed = await firstAnswer(tlsd.port, clientHello({ version: 0x0303, compression: [1, 0] }));
    ctx.tries++;
    ctx.check(compressed.kind === 'serverHello' && compressed.compression === 0, 'DEFLATE offered: the server chooses no compression', describe(compressed));

    // Real clients, with the lowest security level so that they offer the old versions at all.
    for (const flag of ['-tls1', '-tls1_1']) {
      const result = opensslClient(tlsd.port, [flag, '-cipher', 'DEFAULT:@SECLEVEL=0'], ctx.cast.alice, 'hello\n');
      ctx.tries++;
      ctx.check(result.status !== 0 && !/^hello$/m.test(result.output) && !/Cipher is (?!\(NONE\))/.test(result.output), `openssl s_client ${flag}: no session`, result.output.split('\n').filter((l) => /alert|error|Cipher is|Protocol/.test(l)).slice(0, 3).join(' | '));
    }
    const tls12 = opensslClient(tlsd.port, ['-tls1_2'], ctx.cast.alice, '');
    ctx.check(/Compression: NONE/.test(tls12.output), 'openssl s_client -tls1_2 reports "Compression: NONE"', tls12.output.split('\n').find((l) => /Compression/.test(l)) ?? 'no Compression line');
    const node11 = await converse(tlsd.port, ctx.cast.alice, { payload: Buffer.from('hello\n'), connect: { minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' } as ConnectionOptions });
    ctx.tries++;
    ctx.check(!node11.secure && node11.data.length === 0, "Node's tls.connect with maxVersion TLSv1.1: no session", node11.error);
    await sleep(300);
    const unsupported = countMatches(tlsd.stderr(), /TLS handshake has failed: .*(unsupported protocol|version)/i);
    ctx.check(unsupported >= 5, 'each legacy attempt is logged as a failed handshake, with the reason', `${unsupported} lines`);
    reportCanary(ctx, await others.stop());
    await sleep(300);
    ctx.check(countMatches(tlsd.stderr(), /connected as SERVER/) === countMatches(tlsd.stderr(), /started child/), 'no legacy attempt reaches the child stage');
    await settle(ctx, tlsd, tracker);
  },
};

export const renegotiation: SoakCase = {
  id: 'security-renegotiation',
  title: 'client-initiated renegotiation is refused (Node and openssl, TLS 1.2); the session and others survive',
  async run(ctx) {
    const attempts = ctx.profile.pick(3, 20);
    const { tlsd, tracker, others } = await zooTlsd(ctx);
    let refused = 0;
    const details: string[] = [];
    const labels: string[] = [];
    for (let i = 0; i < attempts; i++) {
      const socket = await secureClient(clientOptions(tlsd.port, ctx.cast.alice, { maxVersion: 'TLSv1.2', servername: 'echo.test' }));
      labels.push(labelOf(socket));
      socket.write('before\n');
      if (!(await firstData(socket, 5_000))) ctx.sessionFailures++; // no echo: the session itself did not work
      const outcome = await new Promise<string>((resolve) => {
        const timer = setTimeout(() => resolve('no answer within 2 s'), 2_000);
        const ok = socket.renegotiate({ rejectUnauthorized: false }, (error) => {
          clearTimeout(timer);
          resolve(error ? `refused: ${error.message}` : 'renegotiated');
        });
        if (!ok) resolve('not attempted');
        socket.once('close', () => resolve('closed'));
      });
      if (outcome !== 'renegotiated') refused++;
      if (details.length < 2) details.push(outcome);
      socket.end(); // the client gives up: from here on tlsd must end the session by itself
    }
    ctx.tries += attempts;
    ctx.check(refused === attempts, `Node clients: renegotiation never succeeds (${attempts} tries)`, details.join('; '));
    const openssl = opensslClient(tlsd.port, ['-tls1_2', '-servername', 'echo.test'], ctx.cast.alice, 'R\n');
    ctx.tries++;
    ctx.check(!/RENEGOTIATING[\s\S]*verify return/i.test(openssl.output) || /no renegotiation/i.test(openssl.output), 'openssl s_client "R": refused', openssl.output.split('\n').filter((l) => /RENEG|renegotiation|alert/i.test(l)).join(' | '));
    ctx.note(`Node's renegotiate(): ${details[0]}; openssl "R": ${/no renegotiation/i.test(openssl.output) ? 'error "no renegotiation"' : 'no such error'}`);
    ctx.check(tlsd.running(), 'tlsd stays up');
    reportCanary(ctx, await others.stop());
    const stuck = await awaitEnded(tlsd.stderr, labels, ctx.profile.pick(5_000, 15_000));
    ctx.check(stuck.length === 0, 'a session where renegotiation was tried ends once its client leaves', `${stuck.length} of ${labels.length} still open ${ctx.profile.pick(5, 15)} s later; e.g. ${stuck.slice(0, 1).map((label) => story(tlsd.stderr(), label)).join('')}`);
    await settle(ctx, tlsd, tracker);
  },
};

export const noCertificateNoChild: SoakCase = {
  id: 'security-no-client-cert',
  title: 'clients without a certificate (TLS 1.3, TLS 1.2, openssl) never get a child',
  short: true,
  async run(ctx) {
    const attempts = ctx.profile.pick(20, 200);
    const marks = join(ctx.dir, 'marks');
    spawnSync('mkdir', [marks]);
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: ['sh', '-c', 'touch "$MARKS/child.$$"; exec cat'], env: { MARKS: marks } });
    await warmUp(ctx, tlsd.port);
    const tracker = track(tlsd.pid);
    const before = readdirSync(marks).length;
    let gotData = 0;
    for (let i = 0; i < attempts; i++) {
      const result = await converse(tlsd.port, undefined, { payload: Buffer.from('let me in\n'), connect: i % 2 === 0 ? {} : { maxVersion: 'TLSv1.2' }, ms: 10_000 });
      if (result.data.length > 0) gotData++;
    }
    const openssl = opensslClient(tlsd.port, ['-quiet'], undefined, 'let me in\n');
    ctx.tries += attempts + 1;
    await sleep(500);
    ctx.check(readdirSync(marks).length === before, `no child starts for any of ${attempts + 1} clients without a certificate`, `${readdirSync(marks).length - before} children started`);
    ctx.check(gotData === 0 && !/let me in/.test(openssl.output), 'and none gets a byte back');
    const logged = countMatches(tlsd.stderr(), /Peer certificate is required, connection closed|peer did not return a certificate|certificate required/);
    ctx.check(logged >= attempts, 'each is logged with the reason', `${logged} lines`);
    await settle(ctx, tlsd, tracker);
  },
};

/** Base64 body of a PEM file, as 32-character pieces: any of them in a log would be a leak. */
function pemPieces(file: string): string[] {
  const body = readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => !line.startsWith('-----'))
    .join('');
  const pieces: string[] = [];
  for (let i = 0; i + 32 <= body.length; i += 16) pieces.push(body.slice(i, i + 32));
  return pieces;
}

export const secretsStayHome: SoakCase = {
  id: 'security-key-and-environment',
  title: 'the private key never reaches a log or a child; no stale identity in the child environment; exposed keys warned about',
  short: true,
  async run(ctx) {
    const key = join(ctx.dir, 'key.pem');
    const cert = join(ctx.dir, 'cert.pem');
    copyFileSync(ctx.cast.server.key, key);
    copyFileSync(ctx.cast.server.cert, cert);
    chmodSync(key, 0o600);
    const sink = new SyslogSocket(join(ctx.dir, 'log'));
    sink.follow();
    ctx.teardown(() => sink.close());
    const stale = Object.fromEntries(
      ['SHA256', 'ALIAS', 'SIDE', 'PROTO', 'TCPREMOTEIP', 'TCPREMOTEPORT', 'TCPLOCALIP', 'TCPLOCALPORT', 'TCPREMOTEHOST', 'TCPREMOTEINFO', 'TCPLOCALHOST', 'SSL_PROTOCOL', 'SSL_CIPHER', 'SSL_TLS_SNI_SERVERNAME', 'SSL_PEER_CERT_HASH', 'SSL_PEER_CERT_SUBJECT'].map((name) => [name, 'stale']),
    );
    // Names other TLS wrappers set (stunnel, mod_ssl) are not tlsd's: tlsd(1) passes its environment
    // on as it is and replaces only its own variables, so these reach the child untouched, like
    // SSL_CERT_DIR. (Whoever starts tlsd with them set chose them; no peer can.)
    const foreign = Object.fromEntries(['SSL_CLIENT_S_DN', 'SSL_CLIENT_CERT', 'SSL_CLIENT_VERIFY', 'SSL_SESSION_ID', 'SSL_CLIENT_DN', 'SSL_CLIENT_I_DN'].map((name) => [name, 'from-the-operator']));
    const tlsd = await startSoakTlsd(ctx, {
      command: ['sh', '-c', 'env; echo FDS; ls -l /proc/$$/fd'],
      options: ['-n', '-k', key, '-c', cert],
      env: { ...stale, ...foreign, TLSD_SYSLOG_SOCKET: sink.path, SSL_CERT_DIR: '/etc/ssl/certs' },
    });
    const tracker = track(tlsd.pid);
    const outputs: string[] = [];
    for (const [identity, servername] of [[ctx.cast.alice, 'soak.example'], [undefined, undefined], [ctx.cast.bob, undefined]] as const) {
      const reply = await converse(tlsd.port, identity, { ...(servername ? { servername } : {}) });
      ctx.tries++;
      outputs.push(reply.data.toString());
    }
    const environments = outputs.map((output) => new Map(output.split('FDS')[0]!.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])));
    const leftOver = environments.flatMap((env, i) => [...env].filter(([name, value]) => value === 'stale' && name in stale).map(([name]) => `${name} (session ${i + 1})`));
    ctx.check(environments.every((env) => env.size > 5) && leftOver.length === 0, "no connection variable of tlsd's own environment reaches a child (with and without a certificate or SNI)", leftOver.join(', '));
    const passed = { ...foreign, SSL_CERT_DIR: '/etc/ssl/certs' };
    const altered = [...new Set(environments.flatMap((env) => Object.entries(passed).filter(([name, value]) => env.get(name) !== value).map(([name]) => name)))];
    ctx.check(altered.length === 0, "the rest of tlsd's environment reaches every child as it is (SSL_CERT_DIR; stunnel's and mod_ssl's SSL_CLIENT_* names, which are not tlsd's)", `missing or changed: ${altered.join(', ')}`);
    ctx.note(`stunnel's and mod_ssl's identity names (${Object.keys(foreign).join(', ')}) in tlsd's own environment pass to children as tlsd(1) says: tlsd sets and clears only its own variables`);
    ctx.check(environments[1]?.has('SHA256') === false && environments[0]?.get('SHA256') === ctx.cast.alice.fingerprint, 'SHA256 is the peer, or absent without a certificate');

    // Reloads that fail on the key itself: the error must name the file, never show the key.
    const goodKey = readFileSync(key, 'utf8');
    writeFileSync(key, goodKey.slice(0, goodKey.length - 40));
    tlsd.signal('SIGHUP');
    await eventually(() => /Failed to load key or certificate/.test(tlsd.stderr()), 5_000);
    copyFileSync(ctx.cast.bob.key, key);
    tlsd.signal('SIGHUP');
    await eventually(() => countMatches(tlsd.stderr(), /Failed to load key or certificate/) >= 2, 5_000);
    ctx.check(countMatches(tlsd.stderr(), /Failed to load key or certificate/) >= 2, 'a truncated key and a key of another certificate: both reloads fail and say so');
    writeFileSync(key, goodKey);
    chmodSync(key, 0o644);
    tlsd.signal('SIGHUP');
    await eventually(() => /readable by everyone/.test(tlsd.stderr()), 5_000);
    ctx.check(/Key file .* is readable by everyone \(mode 0644\)/.test(tlsd.stderr()), 'a key made readable by everyone is warned about on reload');
    chmodSync(key, 0o604);
    tlsd.signal('SIGHUP');
    await eventually(() => countMatches(tlsd.stderr(), /readable by everyone/) >= 2, 5_000);
    ctx.check(/mode 0604/.test(tlsd.stderr()), 'mode 0604 too');
    chmodSync(key, 0o640);
    const warnings = countMatches(tlsd.stderr(), /readable by everyone/);
    tlsd.signal('SIGHUP');
    await eventually(() => countMatches(tlsd.stderr(), /Reloaded key and certificate/) >= 3, 5_000);
    ctx.check(countMatches(tlsd.stderr(), /readable by everyone/) === warnings, 'a group-readable key (0640) is not');

    await sleep(300);
    sink.drain();
    const logs = `${tlsd.stderr()}\n${sink.records.join('\n')}`;
    const pieces = [...pemPieces(ctx.cast.server.key), ...pemPieces(ctx.cast.bob.key)];
    const leaked = pieces.filter((piece) => logs.includes(piece) || outputs.some((o) => o.includes(piece)));
    ctx.check(sink.records.length > 0, 'the syslog socket got the messages too', `${sink.records.length} records`);
    ctx.check(leaked.length === 0 && !/PRIVATE KEY/.test(logs) && !outputs.some((o) => /PRIVATE KEY/.test(o)), 'no piece of a private key in stderr, syslog or any child output', `${leaked.length} pieces found`);
    const keyFds = outputs.filter((o) => o.includes(key) || o.includes(ctx.cast.server.key));
    ctx.check(keyFds.length === 0, 'no child holds the key file open');
    ctx.note(`${sink.records.length} syslog records and ${tlsd.stderr().split('\n').length} stderr lines searched for ${pieces.length} pieces of two keys`);
    await settle(ctx, tlsd, tracker);
  },
};
