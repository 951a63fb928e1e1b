import { mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { countMatches } from '../limits-faults.js';
import { runProgram } from '../run.js';
import { bin } from '../tlsd.js';
import type { SoakCase } from './case.js';
import { eventually, settle, startSoakTlsd, track, usage } from './daemon.js';
import { zooTlsd } from './faults-children.js';
import { converse, reportCanary, Rng } from './traffic.js';

/** No JavaScript stack trace in what a program printed. */
const stackTrace = /^\s+at .+:\d+:\d+\)?$/m;

/** `3 × reason, 1 × other`, numbers in the reasons blurred so that alike ones count together. */
function histogram(reasons: string[]): string {
  const counts = new Map<string, number>();
  for (const r of reasons.map((r) => r.replace(/\d+/g, 'N').slice(0, 120))) counts.set(r, (counts.get(r) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).map(([r, n]) => `${n} × ${r}`).join('; ') || 'none';
}

/** The longest line in a log: a hostile input must not turn into a huge log line. */
const longestLine = (text: string): number => Math.max(0, ...text.split('\n').map((line) => line.length));

export const randomStdinLines: SoakCase = {
  id: 'hostile-stdin-lines',
  title: 'random "host port" lines on stdin (seeded): binary, huge, malformed, refused, pinned wrong, valid',
  async run(ctx) {
    const count = ctx.profile.pick(200, 2000);
    const rng = new Rng(51);
    const acceptor = await startSoakTlsd(ctx, { identity: ctx.cast.bob, command: ['sh', '-c', 'echo hi'], options: ['--max-peers', '1024', '--max-handshakes', '1024'] });
    const closed = await startSoakTlsd(ctx, { identity: ctx.cast.bob, command: ['cat'] });
    const closedPort = closed.port;
    closed.proc.kill('SIGKILL');
    await closed.exited;
    // Dial lines take peer slots as fast as stdin gives them; with the default 64, incoming peers
    // would be refused meanwhile (as designed). Room for both, so that the canary measures harm.
    const { tlsd, tracker, others } = await zooTlsd(ctx, { stdin: 'pipe', options: ['--max-peers', '512'] });
    const wrongPin = 'ab'.repeat(32);
    const makers: Array<() => string> = [
      () => rng.bytes(rng.int(1, 200)).toString('latin1').replace(/\n/g, ' '),
      () => 'x'.repeat(rng.int(4097, 20_000)),
      () => rng.pick(['a', 'a b c d', '127.0.0.1', ' \t ', '# comment', '127.0.0.1\t80\tx\ty']),
      () => `127.0.0.1 ${rng.pick(['0', '65536', '-1', 'abc', '99999999', '1e3', '0x50', '80.5'])}`,
      () => `127.0.0.1 ${acceptor.port} ${rng.pick(['zz', 'ab'.repeat(31), 'AB:CD', 'ab'.repeat(33)])}`,
      () => `${rng.pick(['[::1', '::::', '[fe80::1%lo]', '1.2.3.4.5', '256.1.1.1', '-bad-.example', 'a..b'])} 80`,
      () => `127.0.0.1 ${closedPort}`,
      () => `127.0.0.1 ${acceptor.port}`,
      () => `127.0.0.1 ${acceptor.port} ${wrongPin}`,
      () => `tlsd-soak-${rng.int(0, 1e6)}.invalid ${acceptor.port}`,
      () => `127.0.0.1 ${acceptor.port}\r`,
    ];
    const lines: string[] = [];
    for (let i = 0; i < count; i++) lines.push(makers[rng.int(0, makers.length - 1)]!());
    const valid = lines.filter((line) => line.replace(/\r$/, '') === `127.0.0.1 ${acceptor.port}`).length;
    // Blank lines and lines of blanks are skipped silently; every other line leaves one outcome.
    const meaningful = lines.filter((line) => line.trim() !== '').length;
    // Twenty lines every 50 ms: an input that is odd, not a flood of dials (fork-bomb and the
    // load cases do volume).
    for (let i = 0; i < lines.length; i += 20) {
      tlsd.proc.stdin!.write(lines.slice(i, i + 20).map((line) => `${line}\n`).join(''));
      await sleep(50);
    }
    tlsd.proc.stdin!.end();
    ctx.tries += count;
    const outcome = /(Skipped stdin line|Skipped a stdin line of \d+ bytes|Cannot connect to|connected as CLIENT|fingerprint mismatch)/g;
    await eventually(() => countMatches(tlsd.stderr(), outcome) >= meaningful, 60_000);
    await sleep(500);
    const outcomes = countMatches(tlsd.stderr(), outcome);
    ctx.check(outcomes === meaningful, `every line that is not blank leaves exactly one log line: skipped, refused, mismatched or connected (${meaningful})`, `${outcomes} outcome lines`);
    const accepted = countMatches(acceptor.stderr(), /connected as SERVER/);
    ctx.check(accepted === valid + lines.filter((l) => l.endsWith(` ${wrongPin}`)).length, `each valid line connects, in spite of the garbage around it (${valid}, plus the pinned ones that are then refused)`, `the target saw ${accepted} connections`);
    ctx.check(countMatches(tlsd.stderr(), /fingerprint mismatch/) === lines.filter((l) => l.endsWith(` ${wrongPin}`)).length, 'a wrong pin is refused, with both fingerprints logged');
    ctx.check(!stackTrace.test(tlsd.stderr()), 'no stack trace');
    ctx.check(longestLine(tlsd.stderr()) < 1000, 'no log line longer than 1000 characters, whatever the input', `${longestLine(tlsd.stderr())}`);
    ctx.check(tlsd.running(), 'tlsd goes on serving after the end of its stdin');
    ctx.note(`${count} lines, ${valid} valid; ${countMatches(tlsd.stderr(), /Skipped/g)} skipped, ${countMatches(tlsd.stderr(), /Cannot connect to/g)} could not connect`);
    ctx.note(`why dials failed: ${histogram([...tlsd.stderr().matchAll(/Cannot connect to \S+: (.*)/g)].map((m) => m[1]!))}`);
    const refusals = [...tlsd.stderr().matchAll(/connection refused: (.*)/g)].map((m) => m[1]!);
    if (refusals.length > 0) ctx.note(`incoming refusals meanwhile: ${histogram(refusals)}`);
    reportCanary(ctx, await others.stop());
    await settle(ctx, tlsd, tracker);
  },
};

export const hostileAliasFiles: SoakCase = {
  id: 'hostile-alias-files',
  title: '--aliases files with binary garbage, CRLF, duplicates, a 10 MB line; replaced by a directory',
  async run(ctx) {
    const { alice, bob } = ctx.cast;
    const rng = new Rng(52);
    const file = join(ctx.dir, 'aliases');
    const showAlias = ['sh', '-c', 'echo "${ALIAS:-none}"'];
    const variants: Array<{ name: string; text: Buffer; aliceAs: string | undefined }> = [
      {
        name: 'binary garbage around a good line',
        text: Buffer.concat([rng.bytes(ctx.profile.pick(64, 1024) * 1024), Buffer.from(`\n${alice.fingerprint} alice\n`), rng.bytes(4096)]),
        aliceAs: 'alice',
      },
      { name: 'CRLF line ends', text: Buffer.from(`# aliases\r\n${alice.fingerprint} alice\r\n\r\n`), aliceAs: 'alice' },
      {
        name: 'duplicate fingerprints and aliases',
        text: Buffer.from(`${alice.fingerprint} first\n${alice.fingerprint} second\n${'0'.repeat(64)} first\n${alice.fingerprint.toUpperCase()} upper\n`),
        aliceAs: 'first',
      },
      { name: 'a 10 MB line first', text: Buffer.concat([Buffer.alloc(10 * 1024 * 1024, 'a'), Buffer.from(`\n${alice.fingerprint} alice\n`)]), aliceAs: 'alice' },
      { name: 'a 10 MB line of blanks and tabs', text: Buffer.concat([Buffer.from(`${alice.fingerprint} alice\n`), Buffer.alloc(10 * 1024 * 1024, ' \t')]), aliceAs: 'alice' },
      { name: 'NUL bytes and a line without its newline', text: Buffer.from(`\0\0\0\n${alice.fingerprint} alice`), aliceAs: 'alice' },
    ];
    let first = true;
    for (const variant of variants) {
      writeFileSync(file, variant.text);
      const started = Date.now();
      const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: showAlias, options: ['--aliases', file] });
      const startMs = Date.now() - started;
      const tracker = first ? track(tlsd.pid) : undefined;
      const fromAlice = await converse(tlsd.port, alice, {});
      const fromBob = await converse(tlsd.port, bob, {});
      ctx.tries += 2;
      const label = variant.name;
      ctx.check(fromAlice.data.toString() === `${variant.aliceAs ?? 'none'}\n`, `${label}: the listed peer is served with ALIAS=${variant.aliceAs}`, `got ${JSON.stringify(fromAlice.data.toString())}`);
      ctx.check(fromBob.data.length === 0, `${label}: an unlisted peer is refused`, JSON.stringify(fromBob.data.toString()));
      ctx.check(!stackTrace.test(tlsd.stderr()) && longestLine(tlsd.stderr()) < 1000, `${label}: clear log lines (no stack trace, none over 1000 characters)`, `longest ${longestLine(tlsd.stderr())}`);
      ctx.check(startMs < 10_000, `${label}: tlsd starts in reasonable time`, `${startMs} ms`);
      ctx.note(`${label}: started in ${startMs} ms, ${countMatches(tlsd.stderr(), /line skipped/)} lines reported as skipped, RSS ${usage(tlsd.pid).rssMiB} MiB`);
      if (tracker) await settle(ctx, tlsd, tracker);
      first = false;
      tlsd.proc.kill('SIGKILL');
      await tlsd.exited;
    }

    // A file replaced by a directory (or made unreadable) keeps the aliases already known.
    writeFileSync(file, `${alice.fingerprint} alice\n`);
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: showAlias, options: ['--aliases', file] });
    renameSync(file, `${file}.old`);
    mkdirSync(file);
    tlsd.signal('SIGHUP');
    await eventually(() => /Cannot reload .*aliases/.test(tlsd.stderr()), 5_000);
    ctx.check(/Cannot reload .*aliases, keeping the 1 aliases known: .*EISDIR/.test(tlsd.stderr()), 'a file replaced by a directory: the reload fails with the reason and keeps the aliases', tlsd.stderr().split('\n').find((l) => /reload/i.test(l)));
    const still = await converse(tlsd.port, alice, {});
    ctx.tries++;
    ctx.check(still.data.toString() === 'alice\n', 'and the listed peer is still served');
    rmSync(file, { recursive: true });
  },
};

export const std2fifoPathTricks: SoakCase = {
  id: 'hostile-std2fifo-names',
  title: 'std2fifo values with path tricks (seeded), symlinks planted in its directory, and SNI chosen by the peer',
  async run(ctx) {
    const rng = new Rng(53);
    const root = join(ctx.dir, 'root');
    const outside = join(ctx.dir, 'outside');
    mkdirSync(root);
    mkdirSync(outside);
    writeFileSync(join(outside, 'victim'), 'untouched\n');
    const tricks = ['', '.', '..', '../outside', '../../etc', '/etc', 'a/b', 'a/../..', './.', '..\\..', '...', ' ..', '.. ', '-rf', '--', 'a\nb', 'x'.repeat(255), 'x'.repeat(256), '%2e%2e', '\u2024\u2024', '..\u2215..', 'con', '~', '$HOME', '*', 'outside'];
    const count = ctx.profile.pick(60, 300);
    const values: string[] = [...tricks];
    const alphabet = ['.', '/', '\\', 'a', '-', ' ', '~', '\n', '%', '..', '\u00e9'];
    while (values.length < count) values.push(Array.from({ length: rng.int(1, 8) }, () => rng.pick(alphabet)).join(''));
    let wrong = 0;
    const problems: string[] = [];
    for (const value of values) {
      const result = await runProgram('std2fifo', ['-v', 'PEER', root], { env: { PEER: value, NODE_OPTIONS: '' }, input: '' });
      const unsafe = value === '' || value === '.' || value === '..' || value.includes('/');
      const ok = unsafe ? result.status === 1 && /unsafe directory name/.test(result.stderr) : result.status === 0 || result.status === 1;
      if (!ok || stackTrace.test(result.stderr)) {
        wrong++;
        problems.push(`${JSON.stringify(value)}: status ${result.status}, ${result.stderr.trim().slice(0, 200)}`);
      }
    }
    ctx.tries += values.length;
    ctx.check(wrong === 0, 'unsafe values are refused with the reason, others confined; never a stack trace', problems.slice(0, 3).join('; '));
    const escaped = readdirSync(outside).filter((name) => name !== 'victim');
    ctx.check(escaped.length === 0 && readFileSync(join(outside, 'victim'), 'utf8') === 'untouched\n', 'nothing is made or changed outside the root', escaped.join(', '));
    const strays = readdirSync(root).filter((name) => !realpathSync(join(root, name)).startsWith(realpathSync(root)));
    ctx.check(strays.length === 0, 'everything made lies inside the root', strays.join(', '));

    // Symlinks planted where std2fifo will look: a directory link out of the root, FIFOs that are links.
    symlinkSync(outside, join(root, 'evil'));
    mkdirSync(join(root, 'planted'));
    symlinkSync(join(outside, 'victim'), join(root, 'planted', 'in'));
    mkdirSync(join(root, 'plain'));
    writeFileSync(join(root, 'plain', 'out'), 'a regular file\n');
    for (const [name, why] of [
      ['evil', /not a directory/],
      ['planted', /not a FIFO/],
      ['plain', /not a FIFO/],
    ] as const) {
      const result = await runProgram('std2fifo', ['-v', 'PEER', root], { env: { PEER: name, NODE_OPTIONS: '' }, input: 'data' });
      ctx.tries++;
      ctx.check(result.status === 1 && why.test(result.stderr) && !stackTrace.test(result.stderr), `a planted ${name}: refused with the reason`, `status ${result.status}: ${result.stderr.trim()}`);
    }
    ctx.check(readdirSync(outside).length === 1 && readFileSync(join(outside, 'victim'), 'utf8') === 'untouched\n', 'the link targets are untouched');

    // Over the network: the peer chooses SSL_TLS_SNI_SERVERNAME, and std2fifo -v uses it. tlsd
    // passes host names only, so these never reach std2fifo: each is logged and left unset.
    const tlsd = await startSoakTlsd(ctx, { identity: ctx.cast.server, command: [process.execPath, bin('std2fifo'), '-e', '-v', 'SSL_TLS_SNI_SERVERNAME', root] });
    const tracker = track(tlsd.pid);
    for (const name of ['..', '.', '../outside', 'a/b', '...', 'x'.repeat(200), '../../../../tmp/tlsd-soak-escape']) {
      // No payload: a safe name gets its FIFOs and std2fifo ends with the input; a message would wait for a reader.
      const result = await converse(tlsd.port, ctx.cast.alice, { servername: name, ms: 10_000 });
      ctx.tries++;
      if (result.error && !/ECONNRESET|EPIPE/.test(result.error)) ctx.note(`SNI ${JSON.stringify(name)}: ${result.error}`);
    }
    await sleep(500);
    ctx.check(readdirSync(outside).length === 1 && readdirSync('/tmp').every((n) => n !== 'tlsd-soak-escape'), 'a peer naming its directory by SNI cannot leave the root');
    const refused = countMatches(tlsd.stderr(), /is not a host name: SSL_TLS_SNI_SERVERNAME left unset/);
    ctx.check(refused >= 4, 'tlsd refuses the unsafe names with a log line, before any child', `${refused} lines`);
    ctx.note(`${values.length} values tried directly, 3 planted links, 7 server names over TLS`);
    await settle(ctx, tlsd, tracker);
  },
};
