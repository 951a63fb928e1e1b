// tlsd as a drop-in for the original C TLSd, tried as the original's users would: its own test
// (tests/authenticate.sh, reading the start-up lines through wait-for-initialization.sed), its
// log lines for each event, `tlsd … </dev/null`, and `timeout 3 tlsd …`. The original's files stay
// outside the project (.ci/run runs them as they are); this is the same check in our own code.
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { exchange } from './lib/client.js';
import { tempDir } from './lib/identity.js';
import { cast, quietSyslog, withDeadline } from './lib/limits-faults.js';
import { spawnWatched, type WatchedOptions } from './lib/lifecycle.js';
import { bin, startTlsd, type RunningTlsd, type Teardown } from './lib/tlsd.js';

const { server, alice } = cast(t);
const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** wait-for-initialization.sed's three patterns, in its order: the first three lines, exactly. */
const ORIGINAL_START = [/^[^:]+: Initializing$/, /^[^:]+: Attempting to bind: [^ ,]+, port [0-9]+$/, /^[^:]+: Listening on [^ ,]+, port ([0-9]+)$/];

/** Reads stderr's first three lines as the sed script does; the port from the third, or why not. */
async function originalStart(tlsd: RunningTlsd): Promise<{ port: number } | { mismatch: string }> {
  const lines = (await tlsd.waitFor(/^(?:.*\n){3}/)).toString().split('\n', 3);
  for (const [i, pattern] of ORIGINAL_START.entries()) {
    if (!pattern.test(lines[i]!)) return { mismatch: `line ${i + 1} is ${JSON.stringify(lines[i])}, not ${pattern}; stderr:\n${tlsd.stderr()}` };
  }
  return { port: Number(ORIGINAL_START[2]!.exec(lines[2]!)![1]) };
}

/** A program with the tests' syslog (none: messages on stderr) in its environment. */
function spawnQuiet(t: Teardown, command: string, args: string[], options: WatchedOptions = {}): RunningTlsd {
  return spawnWatched(t, command, args, { ...options, env: { ...quietSyslog, ...options.env } });
}

t.test("the original's authenticate.sh, in our own code: start-up lines, then a dial to localhost", async (t) => {
  const dir = tempDir();
  // As the script runs it (-e, -i, stdin /dev/null), bound to loopback as every test here is.
  const serverTlsd = spawnQuiet(t, bin('tlsd'), ['-k', server.key, '-c', server.cert, '-e', '-i', 'tlsd-test-server', '-b', '127.0.0.1', '--', 'sh', '-c', 'echo "${SIDE} talks to ${SHA256}"']);
  const start = await originalStart(serverTlsd);
  if ('mismatch' in start) {
    t.fail(`the start-up lines are the original's: ${start.mismatch}`);
    return;
  }
  t.pass("the first three lines are the original's Initializing, Attempting to bind, Listening on");

  // The client runs without -e: its messages go to syslog (here no socket: stderr instead).
  const fifo = join(dir, 'client-cmd-out');
  execFileSync('mkfifo', [fifo]); // no Node API makes a FIFO
  const reader = spawnQuiet(t, 'cat', [fifo], { stdout: 'pipe' });
  let output = '';
  reader.proc.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const readerDone = once(reader.proc, 'close'); // after all its output was read
  const client = spawnQuiet(t, bin('tlsd'), ['-k', alice.key, '-c', alice.cert, '-i', 'tlsd-test-client', '-b', '127.0.0.1', '--', 'sh', '-c', '( echo "${SIDE} talks to ${SHA256}" && cat ) > client-cmd-out'], {
    cwd: dir,
    stdin: 'pipe',
  });
  // The script's here-string, `localhost ${PORT}`, with PORT as the sed script prints it: it
  // auto-prints the two lines it emptied, so the port comes after two line breaks.
  client.proc.stdin!.end(`localhost \n\n${start.port}\n`);
  await withDeadline(readerDone, 20_000, 'the client child writes both lines and ends');
  t.equal(output, `CLIENT talks to ${server.fingerprint}\nSERVER talks to ${alice.fingerprint}\n`, 'both children talk to the right peer');
  for (const tlsd of [serverTlsd, client]) tlsd.proc.kill('SIGTERM');
  t.equal(await withDeadline(serverTlsd.exited, 10_000, 'the server exits on SIGTERM'), 0);
  t.equal(await withDeadline(client.exited, 10_000, 'the client exits on SIGTERM'), 0);
});

t.test("our own start-up lines come after the original's three, never between them", async (t) => {
  const dir = tempDir();
  // Every start-up line of ours at once: a new default identity, an ignored ALL_PROXY, a
  // NOTIFY_SOCKET tlsd cannot use, a spawn helper that cannot start, a key readable by everyone.
  const home = join(dir, 'config');
  const tlsd = spawnQuiet(t, bin('tlsd'), ['-e', '-b', '127.0.0.1', '--', 'cat'], {
    env: { XDG_CONFIG_HOME: home, TLSD_SYSTEM_DIR: join(dir, 'no-system-identity'), ALL_PROXY: 'http://proxy.invalid:3128', NOTIFY_SOCKET: '@tlsd-test-abstract', TLSD_SPAWNER: join(dir, 'no-such-helper') },
  });
  const start = await originalStart(tlsd);
  t.notOk('mismatch' in start, `the first three lines are the original's${'mismatch' in start ? `: ${start.mismatch}` : ''}`);
  const ours = [/Created a new identity: /, /Ignoring ALL_PROXY/, /Cannot notify systemd at @tlsd-test-abstract/, /Cannot start the spawn helper /, /Our certificate's SHA256: [0-9a-f]{64}$/];
  for (const pattern of ours) await tlsd.waitFor(new RegExp(pattern.source, 'm'));
  const lines = tlsd.stderr().split('\n');
  const listening = lines.findIndex((line) => / Listening on /.test(line));
  for (const pattern of ours) {
    const at = lines.findIndex((line) => pattern.test(line));
    t.ok(at > listening, `${pattern} (line ${at + 1}) comes after Listening on (line ${listening + 1})`);
  }

  // A key readable by everyone: warned about after Listening too.
  const key = join(dir, 'open-key.pem');
  copyFileSync(server.key, key);
  chmodSync(key, 0o644);
  const exposed = spawnQuiet(t, bin('tlsd'), ['-e', '-b', '127.0.0.1', '-k', key, '-c', server.cert, '--', 'cat']);
  const exposedStart = await originalStart(exposed);
  t.notOk('mismatch' in exposedStart, `with an exposed key, the first three lines are still the original's${'mismatch' in exposedStart ? `: ${exposedStart.mismatch}` : ''}`);
  await exposed.waitFor(/is readable by everyone/);
});

t.test('tlsd … </dev/null: "stdin is closed", and it keeps serving without spinning', async (t) => {
  // startTlsd gives tlsd /dev/null as stdin.
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog });
  await tlsd.waitFor(/^tlsd: stdin is closed$/m);
  t.ok(tlsd.stderr().indexOf('stdin is closed') > tlsd.stderr().indexOf('Listening on'), 'after the Listening line');
  t.equal(await exchange(tlsd.port, alice, 'still here\n'), 'still here\n', 'a peer is served after stdin closed');
  // Idle with a closed stdin: a loop reading it again and again would burn a core (200 ticks in
  // 2 s at 100 Hz); an idle daemon uses next to none. Generous, so a loaded machine cannot fail it.
  const before = cpuTicks(tlsd.proc.pid!);
  await sleep(2_000);
  const used = cpuTicks(tlsd.proc.pid!) - before;
  t.ok(used < 60, `idle with a closed stdin: ${used} clock ticks of CPU in 2 s`);
  t.equal((tlsd.stderr().match(/stdin is closed/g) ?? []).length, 1, 'said once');
});

/** utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

t.test('timeout 3 tlsd …: SIGTERM with no peers, exit 0 at once, with the original three lines', async (t) => {
  const started = Date.now();
  // --preserve-status: timeout's own status is tlsd's, not 124.
  const tlsd = spawnQuiet(t, 'timeout', ['--preserve-status', '3', bin('tlsd'), '-e', '-b', '127.0.0.1', '-k', server.key, '-c', server.cert, 'cat']);
  t.equal(await withDeadline(tlsd.exited, 8_000, 'tlsd exits soon after the signal at 3 s'), 0, 'exit status 0');
  t.ok(Date.now() - started < 8_000, `within the deadline (${Date.now() - started} ms from the start)`);
  const lines = tlsd.stderr().trimEnd().split('\n');
  t.same(lines.slice(-3), ['tlsd: Received signal 15', 'tlsd: Terminating gracefully', 'tlsd: Shutting down'], 'the last three lines are the original\'s');
});

t.test("SIGHUP: the original's lines before ours", async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog });
  tlsd.proc.kill('SIGHUP');
  await tlsd.waitFor(/Reloaded key and certificate/);
  t.match(tlsd.stderr(), new RegExp(`^tlsd: Received signal 1\\ntlsd: Reloading key and certificate\\ntlsd: Reloaded key and certificate, SHA256 ${server.fingerprint}$`, 'm'));
});

t.test("a connection's lines: the original's where it had one, ours with the peer label beside them", async (t) => {
  const acceptor = await startTlsd(t, { identity: server, command: ['cat'], env: quietSyslog });
  const dialer = await startTlsd(t, { identity: alice, stdin: 'pipe', command: ['echo', 'hello'], env: quietSyslog });
  dialer.proc.stdin!.write(`127.0.0.1 ${acceptor.port}\n`);
  const label = (await acceptor.waitFor(/^tlsd: (127\.0\.0\.1:(\d+)): session ended$/m))[1]!;
  const port = label.split(':')[1]!;
  const pid = (await acceptor.waitFor(new RegExp(`^tlsd: ${escape(label)}: started child (\\d+)$`, 'm')))[1]!;
  const expected = [
    `Accepted a TCP connection from 127.0.0.1, port ${port}`,
    `Peer's fingerprint: ${alice.fingerprint}`,
    `${label}: connected as SERVER, peer SHA256 ${alice.fingerprint}`,
    `${label}: started child ${pid}`,
    `Waiting for process ${pid} to exit`,
    `Process ${pid} has exited with status 0`,
    `${label}: session ended`,
  ];
  t.match(acceptor.stderr(), new RegExp(expected.map((line) => `^tlsd: ${escape(line)}$`).join('\\n(?:.*\\n)*?'), 'm'), `the acceptor's lines, in order:\n${expected.join('\n')}`);

  const target = `127.0.0.1:${acceptor.port}`;
  await dialer.waitFor(new RegExp(`^tlsd: ${escape(target)}: session ended$`, 'm'));
  const dialed = [
    `Connecting to 127.0.0.1, port ${acceptor.port}`,
    `Connected to 127.0.0.1, port ${acceptor.port}`,
    `Peer's fingerprint: ${server.fingerprint}`,
    `${target}: connected as CLIENT, peer SHA256 ${server.fingerprint}`,
  ];
  t.match(dialer.stderr(), new RegExp(dialed.map((line) => `^tlsd: ${escape(line)}$`).join('\\n(?:.*\\n)*?'), 'm'), `the dialer's lines, in order:\n${dialed.join('\n')}`);

  // A child killed by a signal: the original's line, with the signal's number.
  const killed = await startTlsd(t, { identity: server, command: ['sh', '-c', 'kill -KILL $$'], env: quietSyslog });
  t.equal(await exchange(killed.port, alice, ''), '');
  await killed.waitFor(/^tlsd: Process \d+ was terminated by signal 9$/m);
});
