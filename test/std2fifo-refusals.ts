import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, closeSync, constants, linkSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, statSync, symlinkSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { std2fifo } from '../src/helpers/std2fifo.js';
import { Logger, type Severity } from '../src/log/logger.js';
import { tempDir } from './lib/identity.js';
import { appears, openFiles, shell, started, startStd2fifo, type Running } from './lib/std2fifo.js';
import { bin, type Teardown } from './lib/tlsd.js';

/*
 * A local attacker in the FIFO directory's group (or another user) swaps what std2fifo opens by
 * name: a symbolic link to a file or to a FIFO elsewhere, a file of their own, a FIFO they own, a
 * second name for another peer's FIFO. std2fifo must refuse each with one line and end the session,
 * holding no descriptor to what it refused. The interleavings are forced, not raced: `in` is
 * swapped while a writer of ours holds the old FIFO open (std2fifo reopens it by name only when
 * that writer closes), `out` before the message that makes std2fifo open it.
 */

const root = tempDir('std2fifo-refusals-');
const asRoot = process.getuid?.() === 0;
const OTHER_UID = 65534; // any uid but ours: chown takes numbers, the user need not exist
let names = 0;
const freshName = (): string => `peer${++names}`;

/** A file of the attacker's choosing, with a secret std2fifo must never send to the peer. */
function secretFile(): string {
  const path = join(root, `secret-${++names}`);
  writeFileSync(path, 'secret\n');
  return path;
}

/** The exit status, or 'running' if it has not exited within `ms`. */
async function exitWithin(running: Running, ms: number): Promise<number | null | 'running'> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'running'>((resolve) => (timer = setTimeout(() => resolve('running'), ms)));
  const status = await Promise.race([running.exited, late]);
  clearTimeout(timer);
  return status;
}

/** Opens a FIFO for writing once a reader has it (bounded: 10 s). */
async function openWriter(path: string): Promise<number> {
  for (let i = 0; i < 400; i++) {
    try {
      return openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENXIO') throw error;
    }
    await sleep(25);
  }
  throw new Error(`nobody opened ${path} for reading within 10 s`);
}

/** Whether anyone holds `path` open for reading: a non-blocking writer's open fails with ENXIO if not. */
function hasReader(path: string): boolean {
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENXIO') return false;
    throw error;
  }
}

/** Makes a FIFO as the attacker would (Node has no mkfifo); 0666 unless `mode` says otherwise. */
function mkfifo(path: string, mode = '0666'): void {
  execFileSync('mkfifo', ['-m', mode, '--', path]);
}

/** How many bytes a non-blocking FIFO reader can read now (none written: EOF or EAGAIN). */
function waiting(fd: number): number {
  try {
    return readSync(fd, Buffer.alloc(4096));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
    throw error;
  }
}

type Swap = (path: string) => Promise<{ kind: RegExp; target?: string }>;

const swaps: Record<string, Swap> = {
  'a symbolic link to a regular file': async (path) => {
    const target = secretFile();
    unlinkSync(path);
    symlinkSync(target, path);
    return { kind: /it is a symbolic link, not a FIFO/, target };
  },
  'a symbolic link to a FIFO elsewhere': async (path) => {
    const target = join(root, `elsewhere-${++names}`);
    mkfifo(target);
    unlinkSync(path);
    symlinkSync(target, path);
    return { kind: /it is a symbolic link, not a FIFO/, target };
  },
  'a regular file': async (path) => {
    unlinkSync(path);
    writeFileSync(path, 'secret\n', { mode: 0o666 });
    return { kind: /it is a regular file, not a FIFO/, target: path };
  },
};

t.test('in swapped between two opens (message mode): refused, the session ends', async (t) => {
  for (const [what, swap] of Object.entries(swaps)) {
    await t.test(what, async (t) => {
      const name = freshName();
      const inPath = join(root, name, 'in');
      const s2f = startStd2fifo(t, ['-e', root], { SHA256: name });
      await appears(join(root, name, 'out'));
      // Our writer holds `in`: std2fifo keeps reading the FIFO it has until this writer closes.
      const writer = await openWriter(inPath);
      writeSync(writer, 'before\n');
      t.equal((await s2f.stdoutLength(7)).toString(), 'before\n', 'in works before the swap');
      const { kind, target } = await swap(inPath);
      closeSync(writer); // the end of `in`: std2fifo opens it again by name, and finds the swap
      t.equal(await exitWithin(s2f, 10_000), 1, 'the session ends with status 1 (its stdin is still open)');
      t.match(s2f.stderr(), new RegExp(`^std2fifo: refusing ${inPath}: ${kind.source}; ending the session$`, 'm'), 'one clear line');
      t.notMatch(s2f.stderr(), /internal error|at .*\.js/, 'no internal error, no stack trace');
      t.equal(s2f.stdout().toString(), 'before\n', 'nothing from the swapped-in file reached the peer');
      if (target && statSync(target).isFIFO()) t.notOk(hasReader(target), 'nobody reads the FIFO elsewhere');
    });
  }
});

t.test('out swapped before a message (message mode): refused, nothing written, the session ends', async (t) => {
  for (const [what, swap] of Object.entries(swaps)) {
    await t.test(what, async (t) => {
      const name = freshName();
      const outPath = join(root, name, 'out');
      const s2f = startStd2fifo(t, ['-e', root], { SHA256: name });
      await started(s2f, join(root, name));
      const { kind, target } = await swap(outPath);
      // The attacker reads the FIFO elsewhere, so a write to it would succeed.
      const spy = target && statSync(target).isFIFO() ? openSync(target, constants.O_RDONLY | constants.O_NONBLOCK) : undefined;
      t.teardown(() => spy !== undefined && closeSync(spy));
      s2f.proc.stdin?.write('message from the peer\n');
      t.equal(await exitWithin(s2f, 10_000), 1, 'the session ends with status 1');
      t.match(s2f.stderr(), new RegExp(`^std2fifo: refusing ${outPath}: ${kind.source}; ending the session$`, 'm'), 'one clear line');
      t.notMatch(s2f.stderr(), /internal error|at .*\.js/, 'no internal error, no stack trace');
      if (spy !== undefined) t.equal(waiting(spy), 0, 'the FIFO elsewhere got nothing');
      else if (target) t.equal(readFileSync(target, 'utf8'), 'secret\n', 'the file is unchanged');
    });
  }
});

t.test("out made a second name of another peer's out: refused", async (t) => {
  const [victim, other] = [freshName(), freshName()];
  const s2f = startStd2fifo(t, ['-e', root], { SHA256: victim });
  const neighbour = startStd2fifo(t, ['-e', root], { SHA256: other });
  await started(s2f, join(root, victim));
  await started(neighbour, join(root, other));
  unlinkSync(join(root, victim, 'out'));
  linkSync(join(root, other, 'out'), join(root, victim, 'out'));
  const reader = openSync(join(root, other, 'out'), constants.O_RDONLY | constants.O_NONBLOCK);
  t.teardown(() => closeSync(reader));
  s2f.proc.stdin?.write('for the victim only\n');
  t.equal(await exitWithin(s2f, 10_000), 1, 'the session ends with status 1');
  t.match(s2f.stderr(), /^std2fifo: refusing \S+\/out: it has 2 names \(hard links\), not one; ending the session$/m);
  t.equal(waiting(reader), 0, "the other peer's out got nothing");
  neighbour.proc.stdin?.end();
  t.equal(await neighbour.exited, 0, 'the other session is unaffected');
});

/*
 * The peer directory itself swapped: renamed away and a symbolic link to another directory put in
 * its place, one that holds a FIFO std2fifo would accept on its own (std2fifo's user's, one name,
 * 0600), as a root-only FIFO elsewhere on the system is when std2fifo runs as root. std2fifo opens
 * its FIFOs through the directory it checked at start, so the FIFO elsewhere is never opened, and
 * the swap ends the session with one line rather than leave the peer talking into a directory no
 * local program finds by name any more.
 */
t.test('the peer directory swapped for a link to another directory: nothing crosses, the session ends', async (t) => {
  /** Moves `dir` aside and links its name to a new directory with a FIFO `which` of our own, 0600. */
  const swapDir = (dir: string, which: 'in' | 'out'): string => {
    const elsewhere = join(root, `elsewhere-${++names}`);
    mkdirSync(elsewhere, { mode: 0o700 });
    mkfifo(join(elsewhere, which), '0600');
    renameSync(dir, `${dir}.old`);
    symlinkSync(elsewhere, dir);
    return join(elsewhere, which);
  };
  const refusal = (dir: string): RegExp => new RegExp(`^std2fifo: refusing ${dir}: it is a symbolic link now, not the directory std2fifo opened at start; ending the session$`, 'm');

  await t.test('before a message (out)', async (t) => {
    const name = freshName();
    const dir = join(root, name);
    const s2f = startStd2fifo(t, ['-e', root], { SHA256: name });
    await appears(join(dir, 'out'));
    const local = shell(t, 'cat "$1"', join(dir, 'out'));
    s2f.proc.stdin?.write('first\n');
    t.equal(await local.exited, 0);
    t.equal(local.stdout().toString(), 'first\n', 'out works before the swap');
    const target = swapDir(dir, 'out');
    // Someone reads the FIFO elsewhere, so a write to it would succeed.
    const spy = openSync(target, constants.O_RDONLY | constants.O_NONBLOCK);
    t.teardown(() => closeSync(spy));
    s2f.proc.stdin?.write('second, for the peer directory only\n');
    t.equal(await exitWithin(s2f, 10_000), 1, 'the session ends with status 1 (its stdin is still open)');
    t.match(s2f.stderr(), refusal(dir), 'one clear line');
    t.equal(s2f.stderr().match(/refusing/g)?.length, 1, 'only one');
    t.equal(waiting(spy), 0, 'the FIFO elsewhere got nothing');
  });

  await t.test('between two writers (in)', async (t) => {
    const name = freshName();
    const dir = join(root, name);
    const s2f = startStd2fifo(t, ['-e', root], { SHA256: name });
    await appears(join(dir, 'out'));
    const writer = await openWriter(join(dir, 'in'));
    writeSync(writer, 'before\n');
    t.equal((await s2f.stdoutLength(7)).toString(), 'before\n', 'in works before the swap');
    const target = swapDir(dir, 'in');
    // The FIFO elsewhere holds a secret: read, it would go to the peer.
    const secret = openSync(target, constants.O_RDWR | constants.O_NONBLOCK);
    t.teardown(() => closeSync(secret));
    writeSync(secret, 'secret\n');
    closeSync(writer); // the end of `in`: std2fifo opens it again
    t.equal(await exitWithin(s2f, 10_000), 1, 'the session ends with status 1');
    t.match(s2f.stderr(), refusal(dir), 'one clear line');
    t.equal(s2f.stdout().toString(), 'before\n', 'nothing from the FIFO elsewhere reached the peer');
    t.equal(waiting(secret), 7, 'the secret is still in the FIFO elsewhere: nobody read it');
  });
});

/*
 * Another peer's FIFO renamed over this peer's (same owner, one name, the same mode): nothing in
 * its stat tells it apart, only its inode. std2fifo keeps to the FIFOs it made or found at start.
 */
t.test("another peer's FIFO moved over this peer's: refused (another inode)", async (t) => {
  const refusal = (path: string): RegExp => new RegExp(`^std2fifo: refusing ${path}: it is another FIFO now, not the one std2fifo made or found at start; ending the session$`, 'm');
  /** This peer's session and directory, and another peer's directory (its std2fifo runs too). */
  const pair = async (t: Teardown): Promise<{ victim: Running; mine: string; theirs: string }> => {
    const [mine, theirs] = [join(root, freshName()), join(root, freshName())];
    const victim = startStd2fifo(t, ['-e', root], { SHA256: basename(mine) });
    await started(victim, mine);
    await started(startStd2fifo(t, ['-e', root], { SHA256: basename(theirs) }), theirs);
    return { victim, mine, theirs };
  };

  await t.test('out', async (t) => {
    const { victim, mine, theirs } = await pair(t);
    // The other peer's local reader, holding its out.
    const reader = openSync(join(theirs, 'out'), constants.O_RDONLY | constants.O_NONBLOCK);
    t.teardown(() => closeSync(reader));
    renameSync(join(theirs, 'out'), join(mine, 'out'));
    victim.proc.stdin?.write('for this peer only\n');
    t.equal(await exitWithin(victim, 10_000), 1, 'the session ends with status 1');
    t.match(victim.stderr(), refusal(join(mine, 'out')), 'one clear line');
    t.equal(waiting(reader), 0, "the other peer's reader got nothing");
  });

  await t.test('in', async (t) => {
    const { victim, mine, theirs } = await pair(t);
    const writer = await openWriter(join(mine, 'in'));
    writeSync(writer, 'before\n');
    t.equal((await victim.stdoutLength(7)).toString(), 'before\n', 'in works before the move');
    renameSync(join(theirs, 'in'), join(mine, 'in'));
    closeSync(writer); // std2fifo opens in again, and finds the other peer's
    t.equal(await exitWithin(victim, 10_000), 1, 'the session ends with status 1');
    t.match(victim.stderr(), refusal(join(mine, 'in')), 'one clear line');
    t.equal(victim.stdout().toString(), 'before\n');
  });
});

t.test("out removed, a new FIFO of std2fifo's user moved in: never the same inode number, refused", async (t) => {
  // File systems such as ext4 give a new file the inode number just freed: a FIFO std2fifo's user
  // makes next (another std2fifo, for a new peer) would get it, and a group member could move that
  // one in. std2fifo holds the FIFOs it took, so their numbers are not freed while it runs.
  const name = freshName();
  const out = join(root, name, 'out');
  const s2f = startStd2fifo(t, ['-e', root], { SHA256: name });
  await appears(out);
  const writer = await openWriter(join(root, name, 'in'));
  writeSync(writer, 'started\n');
  t.equal((await s2f.stdoutLength(8)).toString(), 'started\n', 'std2fifo is past its start');
  closeSync(writer);
  const { ino } = statSync(out, { bigint: true });
  unlinkSync(out);
  // Made in the same directory, as ext4 allocates near the parent: the likeliest to get it.
  const candidates = Array.from({ length: 20 }, (_, i) => join(root, name, `new-${i}`));
  for (const candidate of candidates) mkfifo(candidate, '0640');
  const recycled = candidates.find((candidate) => statSync(candidate, { bigint: true }).ino === ino);
  t.equal(recycled, undefined, 'no new FIFO got the number of the one std2fifo holds');
  const candidate = recycled ?? candidates[0]!; // the one that got it, if any: the worst to move in
  renameSync(candidate, out);
  const reader = openSync(out, constants.O_RDONLY | constants.O_NONBLOCK);
  t.teardown(() => closeSync(reader));
  s2f.proc.stdin?.write('for this peer only\n');
  t.equal(await exitWithin(s2f, 10_000), 1, 'the session ends with status 1');
  t.match(s2f.stderr(), new RegExp(`^std2fifo: refusing ${out}: it is another FIFO now, not the one std2fifo made or found at start; ending the session$`, 'm'), 'one clear line');
  t.equal(waiting(reader), 0, 'the FIFO moved in got nothing');
});

t.test('what exists already is used only if it is safe', { skip: asRoot ? false : 'making files owned by another user needs root' }, async (t) => {
  t.test('a FIFO owned by another user in place of in: refused at start', async (t) => {
    const name = freshName();
    mkdirSync(join(root, name), { mode: 0o770 });
    mkfifo(join(root, name, 'in'));
    chownSync(join(root, name, 'in'), OTHER_UID, OTHER_UID);
    const s2f = startStd2fifo(t, [root], { SHA256: name });
    t.equal(await exitWithin(s2f, 10_000), 1, 'exits 1 (its stdin is still open)');
    t.match(s2f.stderr(), new RegExp(`^std2fifo: refusing \\S+/in: it belongs to uid ${OTHER_UID}, not to std2fifo's user \\(uid ${process.geteuid?.()}\\); remove it and std2fifo makes a new one$`, 'm'));
  });

  t.test('a peer directory that is a symbolic link: refused', async (t) => {
    const name = freshName();
    mkdirSync(join(root, `${name}-real`), { mode: 0o770 });
    symlinkSync(join(root, `${name}-real`), join(root, name));
    const s2f = startStd2fifo(t, [root], { SHA256: name });
    t.equal(await exitWithin(s2f, 10_000), 1);
    t.match(s2f.stderr(), /^std2fifo: refusing \S+: it is a symbolic link, not a directory$/m);
    t.same(readdirSync(join(root, `${name}-real`)), [], 'nothing made where it points');
  });

  t.test('a peer directory that others may write to: refused', async (t) => {
    const name = freshName();
    mkdirSync(join(root, name));
    chmodSync(join(root, name), 0o777);
    const s2f = startStd2fifo(t, [root], { SHA256: name });
    t.equal(await exitWithin(s2f, 10_000), 1);
    t.match(s2f.stderr(), /^std2fifo: refusing \S+: others may write to it \(mode 0777\); chmod o-w it$/m);
    t.same(readdirSync(join(root, name)), [], 'no FIFO made in it');
  });

  t.test('a FIFO of its own that others may open: refused', async (t) => {
    const name = freshName();
    mkdirSync(join(root, name), { mode: 0o770 });
    mkfifo(join(root, name, 'out')); // 0666
    const s2f = startStd2fifo(t, [root], { SHA256: name });
    t.equal(await exitWithin(s2f, 10_000), 1);
    t.match(s2f.stderr(), /^std2fifo: refusing \S+\/out: others may open it \(mode 0666\); chmod o= it$/m);
  });

  t.test('in a root anyone may write to (as /tmp), a peer directory made by another user: refused', async (t) => {
    const open = join(root, `open-${freshName()}`);
    mkdirSync(open);
    chmodSync(open, 0o1777);
    const name = freshName();
    mkdirSync(join(open, name));
    chmodSync(join(open, name), 0o2770);
    chownSync(join(open, name), OTHER_UID, OTHER_UID);
    const s2f = startStd2fifo(t, [open], { SHA256: name });
    t.equal(await exitWithin(s2f, 10_000), 1);
    t.match(s2f.stderr(), new RegExp(`^std2fifo: refusing \\S+: it belongs to uid ${OTHER_UID}, and anyone may create it in \\S+ \\(mode 1777\\)$`, 'm'));
    // Its own directory there is fine.
    const mine = freshName();
    const ok = startStd2fifo(t, [open], { SHA256: mine });
    await appears(join(open, mine, 'out'));
    ok.proc.stdin?.end();
    t.equal(await ok.exited, 0, 'a directory std2fifo makes itself in such a root is used');
  });

  t.test('a peer directory made in a set-group-ID root keeps the group, and its FIFOs get it', async (t) => {
    const shared = join(root, `shared-${freshName()}`);
    mkdirSync(shared);
    chownSync(shared, 0, OTHER_UID);
    chmodSync(shared, 0o2770);
    const name = freshName();
    const s2f = startStd2fifo(t, [shared], { SHA256: name });
    await appears(join(shared, name, 'out'));
    t.equal(statSync(join(shared, name)).mode & 0o7777, 0o2770, 'the directory: 2770, set-group-ID kept');
    t.equal(statSync(join(shared, name, 'in')).gid, OTHER_UID, "in has the root's group");
    t.equal(statSync(join(shared, name, 'out')).gid, OTHER_UID, "out has the root's group");
    s2f.proc.stdin?.end();
    t.equal(await s2f.exited, 0);
  });
});

const canHideProc = asRoot && spawnSync('unshare', ['-m', 'true']).status === 0;

t.test('without /proc: one clear line at start, exit 1', { skip: canHideProc ? false : 'hiding /proc needs root and a mount namespace (unshare -m)' }, async (t) => {
  // std2fifo reaches its FIFOs only through /proc/self/fd/N: with no /proc it must not run at all.
  const name = freshName();
  const script = 'mount -t tmpfs none /proc && exec "$@"';
  const result = spawnSync('unshare', ['-m', 'sh', '-c', script, 'sh', bin('std2fifo'), root], {
    env: { ...process.env, SHA256: name, TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log' },
    input: 'message from the peer\n',
    encoding: 'utf8',
    timeout: 10_000,
  });
  t.equal(result.status, 1);
  t.equal(result.stderr, `std2fifo: cannot reach ${join(root, name)} through /proc/self/fd: std2fifo opens its FIFOs through the directory's descriptor, which needs Linux's /proc\n`);
  t.same(readdirSync(join(root, name)), [], 'no FIFO made');
});

/** A logger that keeps its lines, for the in-process run below. */
class KeptLines extends Logger {
  readonly lines: string[] = [];
  constructor() {
    super({ ident: 'std2fifo', stderr: false, syslogPath: '/nonexistent/tlsd-test-log' });
  }
  override log(_severity: Severity, message: string): void {
    this.lines.push(message);
  }
}

t.test('in process: a refused FIFO leaves no descriptor behind', async (t) => {
  // std2fifo's core in this process, so that its descriptors can be looked at after the refusal
  // (the program exits at once, and the kernel would close a leaked one).
  for (const which of ['in', 'out'] as const) {
    await t.test(which, async (t) => {
      const name = freshName();
      const path = join(root, name, which);
      const log = new KeptLines();
      const input = new PassThrough();
      const output = new PassThrough();
      const run = std2fifo({ root, name, continuous: false, log, input, output: () => output });
      const target = secretFile();
      if (which === 'in') {
        const writer = await openWriter(path);
        unlinkSync(path);
        symlinkSync(target, path);
        closeSync(writer);
      } else {
        await appears(path);
        unlinkSync(path);
        symlinkSync(target, path);
        input.write('message from the peer\n');
      }
      const status = await Promise.race([run, sleep(10_000, 'still running')]);
      t.equal(status, 1, 'std2fifo() resolves with 1');
      t.match(log.lines.join('\n'), new RegExp(`^refusing ${path}: it is a symbolic link, not a FIFO; ending the session$`, 'm'));
      const held = openFiles(process.pid).filter((file) => file === target || file.startsWith(join(root, name)));
      t.same(held, [], 'no descriptor left on the file or in the directory');
      input.destroy();
    });
  }
});
