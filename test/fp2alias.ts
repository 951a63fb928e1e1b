import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { tempDir } from './lib/identity.js';
import { readsExtraCertsAtStartup } from './lib/node-startup.js';
import { runProgram } from './lib/run.js';
import { bin, bundle, installedPrograms } from './lib/tlsd.js';

const dir = tempDir('fp2alias-test-');
const fp = (): string => randomBytes(32).toString('hex');
let files = 0;
/** A fresh alias file (not created unless `text` is given). */
const aliasFile = (text?: string): string => {
  const file = join(dir, `aliases-${++files}`);
  if (text !== undefined) writeFileSync(file, text);
  return file;
};
const alice = fp();
const bob = fp();

t.test('a known fingerprint: the command runs with ALIAS set', async (t) => {
  const file = aliasFile(`${alice} alice\n${bob} bob\n`);
  const result = await runProgram('fp2alias', ['-f', file, '--', 'sh', '-c', 'echo "Hello, ${ALIAS}! $SHA256"'], { env: { SHA256: bob } });
  t.equal(result.status, 0);
  t.equal(result.stdout, `Hello, bob! ${bob}\n`);
});

t.test('no command: the alias is printed', async (t) => {
  const file = aliasFile(`${alice} alice\n`);
  const result = await runProgram('fp2alias', ['-f', file], { env: { SHA256: alice } });
  t.equal(result.status, 0);
  t.equal(result.stdout, 'alice\n');
});

t.test('an unknown fingerprint is refused and the command does not run', async (t) => {
  const file = aliasFile(`${alice} alice\n`);
  const marker = join(dir, 'ran-unknown');
  const result = await runProgram('fp2alias', ['-f', file, '--', 'touch', marker], { env: { SHA256: bob } });
  t.equal(result.status, 1);
  t.equal(result.stdout, "I don't recognize you.\n");
  t.notOk(existsSync(marker), 'the command did not run');
});

t.test('a missing file means no aliases yet', async (t) => {
  const result = await runProgram('fp2alias', ['-f', aliasFile()], { env: { SHA256: alice } });
  t.equal(result.status, 1);
  t.equal(result.stdout, "I don't recognize you.\n");
});

t.test('SHA256 missing or malformed: a clear error, exit 1', async (t) => {
  const file = aliasFile(`${alice} alice\n`);
  const missing = await runProgram('fp2alias', ['-f', file, 'true'], { env: { SHA256: undefined } });
  t.equal(missing.status, 1);
  t.match(missing.stderr, /^fp2alias: SHA256 is not set/m);
  t.notMatch(missing.stderr, /at .*\.js/, 'no stack trace');
  for (const bad of ['abc', alice.toUpperCase(), `${alice}0`, `${alice.slice(1)}g`]) {
    const result = await runProgram('fp2alias', ['-f', file, 'true'], { env: { SHA256: bad } });
    t.equal(result.status, 1, `SHA256=${bad.slice(0, 10)}... refused`);
    t.match(result.stderr, /SHA256 is not 64 lowercase hex digits/);
  }
});

t.test('registration with -a: the file is created (0640), the alias added and used', async (t) => {
  const file = aliasFile();
  const result = await runProgram('fp2alias', ['-a', '-f', file, '--', 'sh', '-c', 'echo "Hello, ${ALIAS}!"'], { env: { SHA256: alice }, input: 'alice\n' });
  t.equal(result.status, 0, result.stderr);
  t.equal(result.stdout, 'Enter your alias, please.\nHello, alice!\n');
  t.equal(readFileSync(file, 'utf8'), `${alice} alice\n`);
  t.equal(statSync(file).mode & 0o777, 0o640);
  const again = await runProgram('fp2alias', ['-f', file], { env: { SHA256: alice } });
  t.equal(again.stdout, 'alice\n', 'a known peer is not asked again');
});

t.test('registration appends after a last line without a newline, and accepts CRLF', async (t) => {
  const file = aliasFile(`${alice} alice`);
  const result = await runProgram('fp2alias', ['-a', '-f', file], { env: { SHA256: bob }, input: 'bob\r\n' });
  t.equal(result.status, 0, result.stderr);
  t.equal(result.stdout, 'Enter your alias, please.\nbob\n');
  t.equal(readFileSync(file, 'utf8'), `${alice} alice\n${bob} bob\n`);
});

t.test('a taken alias is refused', async (t) => {
  const file = aliasFile(`${alice} alice\n`);
  const result = await runProgram('fp2alias', ['-a', '-f', file, 'true'], { env: { SHA256: bob }, input: 'alice\n' });
  t.equal(result.status, 1);
  t.equal(result.stdout, "Enter your alias, please.\nThe 'alice' alias is taken already.\n");
  t.equal(readFileSync(file, 'utf8'), `${alice} alice\n`);
});

t.test('invalid aliases are refused with the reason', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['Alice', /lowercase letters/],
    ['a', /2 to 32 characters/],
    ['a'.repeat(33), /2 to 32 characters/],
    ['../x', /lowercase letters/],
    ['al ice', /lowercase letters/],
    ['', /required/],
    ['x'.repeat(1000), /2 to 32 characters/],
  ];
  for (const [alias, why] of cases) {
    const file = aliasFile('');
    const result = await runProgram('fp2alias', ['-a', '-f', file, 'true'], { env: { SHA256: bob }, input: `${alias}\n` });
    t.equal(result.status, 1, `${JSON.stringify(alias.slice(0, 40))} refused`);
    t.match(result.stdout, why);
    t.equal(readFileSync(file, 'utf8'), '', 'nothing added');
  }
  const eof = await runProgram('fp2alias', ['-a', '-f', aliasFile(''), 'true'], { env: { SHA256: bob }, input: '' });
  t.equal(eof.status, 1, 'end of input instead of an alias');
});

t.test('malformed lines are reported with their number and skipped', async (t) => {
  const file = aliasFile(
    ['# the aliases', '', `${alice} Alice`, 'just-one-field', `${bob.toUpperCase()} bob`, `${alice} alice extra`, `  ${bob}\tbob  `, `${alice} bob`, `${alice} alice`].join('\n'),
  );
  const result = await runProgram('fp2alias', ['-e', '-f', file], { env: { SHA256: bob } });
  t.equal(result.status, 0);
  t.equal(result.stdout, 'bob\n');
  for (const line of [3, 4, 5, 6, 8]) t.match(result.stderr, new RegExp(`^fp2alias: .*line ${line}: .*skipped$`, 'm'), `line ${line} reported`);
  t.notMatch(result.stderr, /line (1|2|7|9):/);
  const last = await runProgram('fp2alias', ['-f', file], { env: { SHA256: alice } });
  t.equal(last.stdout, 'alice\n', 'a valid line after malformed ones counts');
  const taken = await runProgram('fp2alias', ['-a', '-f', file], { env: { SHA256: fp() }, input: 'alice\n' });
  t.match(taken.stdout, /'alice' alias is taken/);
});

t.test('-i sets the log prefix', async (t) => {
  const file = aliasFile(`nonsense\n${alice} alice\n`);
  const result = await runProgram('fp2alias', ['-e', '-i', 'aliases', '-f', file], { env: { SHA256: alice } });
  t.match(result.stderr, /^aliases: .*line 1/m);
});

t.test('the bytes after the alias line reach the command intact', async (t) => {
  const file = aliasFile();
  const rest = Buffer.concat([Buffer.from('first line\n'), randomBytes(100_000), Buffer.from('\nlast')]);
  const result = await new Promise<{ status: number | null; stdout: Buffer }>((resolve) => {
    const proc = spawn(bin('fp2alias'), ['-a', '-f', file, '--', 'cat'], {
      env: { ...process.env, SHA256: alice, TLSD_SYSLOG_SOCKET: '/nonexistent' },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const chunks: Buffer[] = [];
    proc.stdout.on('data', (chunk: Buffer) => chunks.push(chunk));
    proc.once('close', (status) => resolve({ status, stdout: Buffer.concat(chunks) }));
    proc.stdin.end(Buffer.concat([Buffer.from('alice\n'), rest])); // one write: alias and data together
  });
  t.equal(result.status, 0);
  t.ok(result.stdout.equals(Buffer.concat([Buffer.from('Enter your alias, please.\n'), rest])), 'stdout is the prompt and then every byte after the alias');

  // Through a real pipe (the above is a socket pair), written in one go by printf.
  const file2 = aliasFile();
  const viaPipe = await new Promise<{ status: number | null; stdout: string }>((resolve) => {
    const proc = spawn('sh', ['-c', `printf 'bob\\nafter the alias\\n' | "$0" -a -f "$1" -- cat`, bin('fp2alias'), file2], {
      env: { ...process.env, SHA256: bob, TLSD_SYSLOG_SOCKET: '/nonexistent' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    proc.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    proc.once('close', (status) => resolve({ status, stdout }));
  });
  t.equal(viaPipe.status, 0);
  t.equal(viaPipe.stdout, 'Enter your alias, please.\nafter the alias\n');
});

t.test('command failures: 127 not found, 126 not executable, the exit code passed on', async (t) => {
  const file = aliasFile(`${alice} alice\n`);
  const env = { SHA256: alice };
  const missing = await runProgram('fp2alias', ['-f', file, '--', 'no-such-command-here'], { env });
  t.equal(missing.status, 127);
  t.match(missing.stderr, /^fp2alias: cannot run "no-such-command-here": .*ENOENT/m);
  const script = join(dir, 'not-executable.sh');
  writeFileSync(script, '#!/bin/sh\necho hi\n');
  chmodSync(script, 0o644);
  const noexec = await runProgram('fp2alias', ['-f', file, '--', script], { env });
  t.equal(noexec.status, 126);
  t.match(noexec.stderr, /EACCES/);
  const code = await runProgram('fp2alias', ['-f', file, '--', 'sh', '-c', 'exit 7'], { env });
  t.equal(code.status, 7);
  const killed = await runProgram('fp2alias', ['-f', file, '--', 'sh', '-c', 'kill -9 $$'], { env });
  t.equal(killed.status, 128 + 9);
});

t.test('as installed (bin/fp2alias through a symlink): Node starts without NODE_EXTRA_CA_CERTS, the command gets it back', async (t) => {
  const file = aliasFile(`${alice} alice\n`);
  const installed = join(installedPrograms(join(dir, 'installed')), 'fp2alias');
  const show = ['--', 'sh', '-c', 'echo "$ALIAS ${NODE_EXTRA_CA_CERTS-unset} ${TLSD_SAVED_NODE_EXTRA_CA_CERTS-unset}"'];
  // Node 20 warns at start-up when the file cannot be read: the warning shows whether it looked.
  // Node 22 and 24 read it only once TLS is loaded, which fp2alias never does.
  const extra = { SHA256: alice, NODE_EXTRA_CA_CERTS: join(dir, 'no-such-ca.pem') };
  const direct = await runProgram('fp2alias', [bundle('fp2alias'), '-f', file, ...show], { env: extra, file: process.execPath });
  if (readsExtraCertsAtStartup) t.match(direct.stderr, /Ignoring extra certs/, 'node dist/fp2alias.cjs, without the launcher, reads NODE_EXTRA_CA_CERTS (the check below can fail)');
  else t.notMatch(direct.stderr, /Ignoring extra certs/, 'this Node reads NODE_EXTRA_CA_CERTS only for TLS, which fp2alias never loads');
  const viaLauncher = await runProgram('fp2alias', ['-f', file, ...show], { env: extra, file: installed });
  t.equal(viaLauncher.status, 0);
  t.equal(viaLauncher.stderr, '', 'the launcher starts Node without it');
  t.equal(viaLauncher.stdout, `alice ${extra.NODE_EXTRA_CA_CERTS} unset\n`, 'the command has it back, and nothing else');
  // A saved value left in the environment (by a fp2alias that exec'd nothing, say) must not come back.
  const unset = await runProgram('fp2alias', ['-f', file, ...show], { env: { SHA256: alice, NODE_EXTRA_CA_CERTS: undefined, TLSD_SAVED_NODE_EXTRA_CA_CERTS: '/stale' }, file: installed });
  t.equal(unset.stdout, 'alice unset unset\n', 'unset stays unset');
});

t.test('signals are passed on to the command, and its status comes back', async (t) => {
  const file = aliasFile(`${alice} alice\n`);
  const script = 'for s in HUP INT USR1 USR2 QUIT; do trap "echo got $s; exit 42" $s; done; echo ready; while :; do sleep 0.05; done';
  for (const signal of ['SIGHUP', 'SIGINT', 'SIGUSR1', 'SIGUSR2', 'SIGQUIT', 'SIGTERM'] as const) {
    const proc = spawn(bin('fp2alias'), ['-f', file, '--', 'sh', '-c', script], {
      env: { ...process.env, SHA256: alice, TLSD_SYSLOG_SOCKET: '/nonexistent' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no "ready" in 10 s')), 10_000);
      proc.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        stdout += chunk;
        if (stdout.includes('ready')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const closed = new Promise<number | null>((resolve) => proc.once('close', (status) => resolve(status)));
    await ready;
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    const status = await closed;
    clearTimeout(timer);
    if (signal === 'SIGTERM') {
      t.equal(status, 128 + 15, 'SIGTERM kills the command: 143');
    } else {
      t.equal(status, 42, `${signal} reached the command`);
      t.match(stdout, `got ${signal.slice(3)}`);
    }
  }
});

t.test('20 simultaneous registrations of distinct fingerprints all land once', async (t) => {
  const file = aliasFile();
  const peers = Array.from({ length: 20 }, (_, i) => ({ fingerprint: fp(), alias: `user${i}` }));
  const results = await Promise.all(peers.map((peer) => runProgram('fp2alias', ['-a', '-f', file], { env: { SHA256: peer.fingerprint }, input: `${peer.alias}\n`, timeoutMs: 60_000 })));
  t.same(results.map((r) => r.status), peers.map(() => 0), 'every registration succeeded');
  const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean).sort();
  t.same(lines, peers.map((peer) => `${peer.fingerprint} ${peer.alias}`).sort(), 'each line exactly once');
});

t.test('10 simultaneous registrations of the same alias: exactly one lands', async (t) => {
  const file = aliasFile();
  const fingerprints = Array.from({ length: 10 }, fp);
  const results = await Promise.all(fingerprints.map((fingerprint) => runProgram('fp2alias', ['-a', '-f', file], { env: { SHA256: fingerprint }, input: 'popular\n', timeoutMs: 60_000 })));
  const winners = results.filter((r) => r.status === 0);
  t.equal(winners.length, 1, 'one winner');
  t.equal(results.filter((r) => r.status === 1 && r.stdout.includes("The 'popular' alias is taken already.")).length, 9, 'nine told it is taken');
  const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
  t.equal(lines.length, 1);
  t.match(lines[0], /^[0-9a-f]{64} popular$/);
});

t.test('a fingerprint registering twice at once gets one alias', async (t) => {
  const file = aliasFile();
  const fingerprint = fp();
  const results = await Promise.all(['one', 'two', 'three'].map((alias) => runProgram('fp2alias', ['-a', '-f', file], { env: { SHA256: fingerprint }, input: `${alias}\n` })));
  const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
  t.equal(lines.length, 1, 'one line for the fingerprint');
  const alias = lines[0]!.split(' ')[1]!;
  for (const result of results) {
    // Whoever came later either found the peer known already or was told its alias.
    if (result.status === 0) t.match(result.stdout, new RegExp(`^${alias}$`, 'm'));
    else t.match(result.stdout, `You are registered already, as '${alias}'.`);
  }
});
