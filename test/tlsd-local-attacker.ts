// Another user on the same machine against the spawn path: while 50 peers are served (and the
// spawn helper is replaced half-way), a process of another uid squats every name it can find and
// connects to every socket of tlsd's it can find. It must get nothing: no byte of any child's
// stream, no connection to tlsd or its helper; every peer gets its own child's answer.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import t, { type Test } from 'tap';
import { exchange } from './lib/client.js';
import { childrenOf, isSpawnHelper, quietSyslog, withDeadline } from './lib/limits-faults.js';
import { makeIdentity, tempDir, type TestIdentity } from './lib/identity.js';
import { root, startTlsd } from './lib/tlsd.js';

const ATTACKER_UID = '12345';
const PEERS = 50;
const squat = readFileSync(`${root}test/lib/attacker/squat.py`, 'utf8');
const isRoot = process.getuid?.() === 0;

interface AttackReport {
  squatted: string[];
  connected: string[];
  accepted: number;
  received: number;
  scans: number;
}

/** Runs squat.py as ATTACKER_UID for `seconds`; resolves once it watches, with its report to come at the end. */
async function startAttacker(t: Test, tlsdPid: number, seconds: number): Promise<{ report: Promise<AttackReport> }> {
  const proc = spawn('setpriv', [`--reuid=${ATTACKER_UID}`, `--regid=${ATTACKER_UID}`, '--clear-groups', '/usr/bin/python3', '-c', squat, String(tlsdPid), String(seconds)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    cwd: '/',
  });
  t.teardown(() => void proc.kill('SIGKILL'));
  let out = '';
  proc.stdout.setEncoding('utf8');
  const watching = new Promise<void>((resolve, reject) => {
    proc.stdout.on('data', (chunk: string) => {
      out += chunk;
      if (out.startsWith('watching\n')) resolve();
    });
    proc.once('exit', () => reject(new Error(`the attacker exited early: ${out}`)));
  });
  const report = new Promise<AttackReport>((resolve, reject) =>
    proc.once('close', (code) => {
      const last = out.trimEnd().split('\n').at(-1) ?? '';
      if (code === 0) resolve(JSON.parse(last) as AttackReport);
      else reject(new Error(`the attacker exited with ${code}: ${out}`));
    }),
  );
  await withDeadline(watching, 10_000, 'the attacker starts');
  return { report };
}

/** Inodes of the Unix sockets that have a name (a path, or an abstract name), from /proc/net/unix. */
function namedUnixSockets(): Map<string, string> {
  const named = new Map<string, string>();
  for (const line of readFileSync('/proc/net/unix', 'latin1').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length >= 8) named.set(fields[6]!, fields[7]!);
  }
  return named;
}

/** The named Unix sockets a process holds: none, when nothing of it can be reached by name. */
function namedSocketsOf(pid: number): string[] {
  const named = namedUnixSockets();
  const found: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    const name = inode === undefined ? undefined : named.get(inode);
    if (name !== undefined) found.push(`${fd}: ${name}`);
  }
  return found;
}

function helperOf(tlsdPid: number): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === tlsdPid && isSpawnHelper(Number(entry))) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

async function servedUnderAttack(t: Test, options: string[]): Promise<void> {
  const dir = tempDir();
  const server = makeIdentity(dir, 'server');
  const peers: TestIdentity[] = Array.from({ length: 5 }, (_, i) => makeIdentity(dir, `peer${i}`));
  const tlsd = await startTlsd(t, {
    identity: server,
    options: [...options, '--max-peers', String(PEERS)],
    command: ['sh', '-c', 'echo "Hello $SHA256"; read -r line; echo "you said $line"'],
    env: quietSyslog,
  });
  const pid = tlsd.proc.pid!;
  const attack = await startAttacker(t, pid, 10);
  const serve = async (n: number): Promise<void> => {
    const peer = peers[n % peers.length]!;
    t.equal(await exchange(tlsd.port, peer, `line ${n}\n`), `Hello ${peer.fingerprint}\nyou said line ${n}\n`, `peer ${n} got its own child's answer`);
  };
  await withDeadline(Promise.all(Array.from({ length: PEERS / 2 }, (_, n) => serve(n))), 30_000, 'the first 25 peers are served');
  // A new helper mid-attack: a rendezvous made afresh would be the moment to squat it.
  const first = helperOf(pid);
  t.ok(first, 'children start through the spawn helper');
  t.same(namedSocketsOf(pid), [], 'tlsd holds no Unix socket that has a name');
  t.same(first ? namedSocketsOf(first) : ['no helper'], [], 'nor does its spawn helper');
  if (first) {
    process.kill(first, 'SIGKILL');
    await withDeadline(new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (!existsSync(`/proc/${first}/stat`) || readFileSync(`/proc/${first}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') !== false) {
          clearInterval(poll);
          resolve();
        }
      }, 20);
    }), 10_000, 'the first helper dies');
  }
  await withDeadline(Promise.all(Array.from({ length: PEERS / 2 }, (_, n) => serve(PEERS / 2 + n))), 30_000, 'the other 25 peers are served');
  const second = helperOf(pid);
  t.ok(second !== undefined && second !== first, 'a new helper served them');
  t.same(second ? namedSocketsOf(second) : ['no helper'], [], 'which has no named socket either');
  const report = await withDeadline(attack.report, 30_000, 'the attack ends');
  t.ok(report.scans > 10, `the attacker looked ${report.scans} times`);
  t.same(report.connected, [], 'no socket of tlsd or its helper accepted a connection from the attacker');
  t.equal(report.accepted, 0, 'nobody connected to a name the attacker squatted');
  t.equal(report.received, 0, 'the attacker received no byte');
  t.equal(childrenOf(pid).length, 0, 'no child is left');
}

t.test('a local user of another uid gets nothing of the spawn path', { skip: !isRoot && 'switching to another uid needs root (run as uid 0)' }, async (t) => {
  t.test('tlsd running as root', (t) => servedUnderAttack(t, []));
  t.test('tlsd running as nobody (--user)', (t) => servedUnderAttack(t, ['--user', 'nobody']));
});
