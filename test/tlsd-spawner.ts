import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { connectTls, exchange, readAll } from './lib/client.js';
import { cast, countMatches, isSpawnHelper, quietSyslog, waitUntil, withDeadline } from './lib/limits-faults.js';
import { tempDir } from './lib/identity.js';
import { keyValues } from './lib/text.js';
import { startTlsd } from './lib/tlsd.js';
import { builtSpawnHelper } from '../src/package-files.js';

const { server, alice } = cast(t);

/** The child reports who started it, its signal state and environment, then echoes after EOF. */
const REPORT = ['sh', '-c', 'echo "ppid=$PPID"; grep -E "^(SigIgn|SigBlk):" /proc/$$/status | tr -d "\\t" | tr ":" "="; echo "side=$SIDE"; echo "sha=$SHA256"; echo "extra=$TLSD_TEST_EXTRA"; echo "input=$(cat)"'];

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

async function sameBehaviour(t: Test, env: NodeJS.ProcessEnv, throughHelper: boolean): Promise<void> {
  const tlsd = await startTlsd(t, { identity: server, command: REPORT, env: { ...quietSyslog, TLSD_TEST_EXTRA: 'kept', ...env } });
  const reply = Object.fromEntries(keyValues(await exchange(tlsd.port, alice, 'after EOF\n')));
  t.equal(reply.side, 'SERVER');
  t.equal(reply.sha, alice.fingerprint, 'SHA256 is the peer fingerprint');
  t.equal(reply.extra, 'kept', "tlsd's own environment reaches the child");
  t.equal(reply.input, 'after EOF', 'the child read to EOF and its reply still reached the peer');
  t.equal(reply.SigIgn, '0000000000000000', 'no signal ignored in the child');
  t.equal(reply.SigBlk, '0000000000000000', 'no signal blocked in the child');
  await tlsd.waitFor(/Process \d+ has exited with status 0/);
  const ppid = Number(reply.ppid);
  if (throughHelper) {
    t.ok(isSpawnHelper(ppid), `the child's parent ${ppid} is the spawn helper`);
    t.equal(parentOf(ppid), tlsd.proc.pid, "and the helper is tlsd's child");
  } else {
    t.equal(ppid, tlsd.proc.pid, "the child's parent is tlsd itself (Node's spawn)");
  }
  // Children gone before they are wired: the peer's data is dropped and each connection ends.
  const quick = await startTlsd(t, { identity: server, command: ['true'], env: { ...quietSyslog, ...env } });
  const ends = await withDeadline(Promise.all(Array.from({ length: 24 }, () => exchange(quick.port, alice, Buffer.alloc(256 * 1024, 'p')))), 15_000, '24 peers of children that exit at once');
  t.same(ends, Array(24).fill(''), 'every peer of a child that exits at once sees its connection end, though it sent 256 KiB');
  await waitUntil(() => (quick.stderr().match(/: session ended/g) ?? []).length === 24, 'all 24 sessions end', quick);
  t.notMatch(quick.stderr(), /connection lost/, 'tlsd read (and dropped) what they sent: none had to be found lost');
  const missing = await startTlsd(t, { identity: server, command: ['tlsd-test-no-such-command'], env: { ...quietSyslog, ...env } });
  t.equal(await exchange(missing.port, alice, 'x\n'), '', 'a command that cannot start: the peer gets nothing');
  await missing.waitFor(/Failed to execute "tlsd-test-no-such-command": spawn tlsd-test-no-such-command ENOENT$/m);
  t.pass('and the log line names the command and ENOENT');
  const notExecutable = join(tempDir(), 'not-executable');
  writeFileSync(notExecutable, '#!/bin/sh\necho ran\n', { mode: 0o644 });
  const refused = await startTlsd(t, { identity: server, command: [notExecutable], env: { ...quietSyslog, ...env } });
  t.equal(await withDeadline(exchange(refused.port, alice, 'x\n'), 15_000, 'the peer of a command that may not be executed'), '', 'a command that may not be executed: the peer gets nothing');
  await refused.waitFor(new RegExp(`Failed to execute "${notExecutable}": spawn ${notExecutable} EACCES$`, 'm'));
  t.pass('and the log line says EACCES');
  // A request far larger than what the helper reads at once: two arguments of 100,000 bytes.
  const long = ['a', 'b'].map((letter) => letter.repeat(100_000));
  const big = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo "${#1} ${#2} $(printf %s "$1$2" | tr -d ab | wc -c)"', 'sh', ...long], env: { ...quietSyslog, ...env } });
  t.equal(await withDeadline(exchange(big.port, alice, ''), 15_000, 'the child of long arguments'), '100000 100000 0\n', 'long arguments reach the child whole');
}

t.test('children start through the spawn helper by default', async (t) => {
  await sameBehaviour(t, {}, true);
});

t.test('TLSD_SPAWNER=node: Node spawns the children itself, with the same behaviour', async (t) => {
  await sameBehaviour(t, { TLSD_SPAWNER: 'node' }, false);
});

t.test('a spawn helper that dies is logged and replaced; sessions it started still end', async (t) => {
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo "ppid=$PPID"; cat'], env: quietSyslog });
  const socket = await connectTls(tlsd.port, alice);
  let heard = '';
  socket.on('data', (chunk: Buffer) => (heard += chunk.toString()));
  const reply = readAll(socket);
  await waitUntil(() => /ppid=\d+\n/.test(heard), 'the child reports its parent', tlsd);
  const helper = Number(/ppid=(\d+)/.exec(heard)?.[1]);
  t.ok(isSpawnHelper(helper), 'the first helper');
  process.kill(helper, 'SIGKILL');
  await tlsd.waitFor(/spawn helper killed by signal SIGKILL; the exit status of 1 children is lost/);
  t.pass('its death is logged');
  socket.end();
  await reply;
  await waitUntil(() => /session ended/.test(tlsd.stderr()), 'the orphaned session ends once its child has', tlsd);
  const next = Object.fromEntries(keyValues(await exchange(tlsd.port, alice, '')));
  t.ok(isSpawnHelper(Number(next.ppid)) && Number(next.ppid) !== helper, 'the next child comes from a new helper');
});

t.test('a spawn helper that gets a malformed request leaves; tlsd logs it, and the next child has a new helper', async (t) => {
  const dir = tempDir();
  // The first helper gets a line tlsd never sends ahead of tlsd's requests; later ones are the real one.
  const wrapper = join(dir, 'helper-wrapper');
  writeFileSync(
    wrapper,
    `#!/bin/sh\nif mkdir "${dir}/once" 2>/dev/null; then\n  { printf 'garbage\\n'; exec cat; } 3>&- | "${builtSpawnHelper}" "$@"\nelse\n  exec "${builtSpawnHelper}" "$@"\nfi\n`,
    { mode: 0o755 },
  );
  const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo "ppid=$PPID"'], env: { ...quietSyslog, TLSD_SPAWNER: wrapper } });
  await tlsd.waitFor(/tlsd spawn helper: malformed request \(a bad request line\); leaving/);
  t.pass('the helper says why it leaves');
  // The wrapper's shell outlives the helper until tlsd's first request breaks its pipe.
  t.equal(await exchange(tlsd.port, alice, ''), '', 'the child asked of the gone helper never runs');
  await tlsd.waitFor(/spawn helper exited with status 3; the exit status of 1 children is lost, and they get no signal from tlsd; the next child starts a new one/);
  t.pass('tlsd logs that the helper left');
  const next = Object.fromEntries(keyValues(await exchange(tlsd.port, alice, '')));
  t.ok(isSpawnHelper(Number(next.ppid)), 'the next child comes from a new helper');
  t.notMatch(tlsd.stderr(), /Cannot start the spawn helper/, 'no fallback to Node spawn was needed');
});

t.test('a spawn helper that is missing or cannot run: logged once, and children start with Node spawn', async (t) => {
  const dir = tempDir();
  const broken = join(dir, 'broken-helper');
  writeFileSync(broken, '#!/bin/sh\nexit 3\n', { mode: 0o755 });
  const cases = [
    { helper: broken, why: 'it exited with status 3 before it was ready' },
    { helper: join(dir, 'no-such-helper'), why: 'spawn .*no-such-helper ENOENT' },
  ];
  for (const { helper, why } of cases) {
    const tlsd = await startTlsd(t, { identity: server, command: ['/bin/sh', '-c', 'echo "ppid=$PPID"'], env: { ...quietSyslog, TLSD_SPAWNER: helper } });
    t.match(tlsd.stderr(), new RegExp(`Cannot start the spawn helper \\(${helper}\\): ${why}; children start with Node's spawn`), helper);
    const reply = Object.fromEntries(keyValues(await exchange(tlsd.port, alice, '')));
    t.equal(Number(reply.ppid), tlsd.proc.pid, "the child's parent is tlsd");
    t.equal((await exchange(tlsd.port, alice, '')).startsWith('ppid='), true, 'and the next one too');
    t.equal(countMatches(tlsd.stderr(), /Cannot start the spawn helper/), 1, 'the failure is logged once');
  }
});
