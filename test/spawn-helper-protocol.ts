// The spawn helper (src/launch/spawn-helper.c) driven directly, as tlsd drives it: requests on its
// stdin, reports and descriptors over Node's IPC channel. A request tlsd never sends ends it.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { builtSpawnHelper } from '../src/package-files.js';
import { SPAWN_HELPER_ARGUMENTS, spawnHelperArguments } from '../src/launch/spawn-helper.js';
import { tempDir } from './lib/identity.js';
import { withDeadline } from './lib/limits-faults.js';

type Report = Record<string, number>;

interface Helper {
  proc: ChildProcess;
  send(text: string | Buffer): void;
  /** The next report (with `handle: 1` where a descriptor came with it), or 'timeout'. */
  next(ms?: number): Promise<Report | 'timeout'>;
  /** What the child of `id` wrote to its stdout, once it closed it. */
  output(id: number): Promise<string>;
  /** Resolves once the child of `id` has written `text` (its output must be awaited already). */
  heard(id: number, text: string): Promise<void>;
  /** tlsd's end of the child's stdin. */
  input(id: number): Socket | undefined;
  /** Resolves with the helper's exit code and what it wrote to stderr (once its children closed it too). */
  exit(): Promise<{ code: number | null; stderr: string }>;
}

function startHelper(t: Test, args: readonly string[] = SPAWN_HELPER_ARGUMENTS, env: NodeJS.ProcessEnv = process.env): Helper {
  // A process group of its own, so that teardown also ends a child a failed test left running.
  const proc = spawn(builtSpawnHelper, args, { stdio: ['pipe', 'ignore', 'pipe', 'ipc'], detached: true, env });
  proc.stdin!.on('error', () => {});
  t.teardown(() => {
    try {
      process.kill(-proc.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  // Not 'close': that waits for the channel as well, which never counts as closed once this side
  // has called disconnect().
  const exited = Promise.all([once(proc, 'exit') as Promise<[number | null]>, once(proc.stderr!, 'end')]).then(([[code]]) => ({ code, stderr }));
  const reports: Report[] = [];
  const outputs = new Map<number, Socket>();
  const inputs = new Map<number, Socket>();
  const heardSoFar = new Map<number, string>();
  let wake: (() => void) | undefined;
  proc.on('message', (message: Report, handle?: Socket) => {
    if (handle) {
      handle.on('error', () => {});
      if (message.stdout !== undefined) outputs.set(message.stdout, handle);
      else if (message.stdin !== undefined) inputs.set(message.stdin, handle);
      else handle.destroy();
    }
    reports.push(handle ? { ...message, handle: 1 } : message);
    wake?.();
  });
  const next = async (ms = 5_000): Promise<Report | 'timeout'> => {
    if (reports.length === 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ms);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
    return reports.shift() ?? 'timeout';
  };
  return {
    proc,
    send: (text) => proc.stdin!.write(text),
    next,
    input: (id) => inputs.get(id),
    heard: (id, text) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the child of ${id} did not write ${JSON.stringify(text)} within 10 s`)), 10_000);
        const check = (): void => {
          if (!(heardSoFar.get(id) ?? '').includes(text)) return;
          clearTimeout(timer);
          outputs.get(id)?.off('data', check);
          resolve();
        };
        outputs.get(id)?.on('data', check);
        check();
      }),
    output: (id) =>
      new Promise((resolve, reject) => {
        const socket = outputs.get(id);
        if (!socket) return reject(new Error(`no stdout descriptor for ${id}`));
        const timer = setTimeout(() => reject(new Error(`no complete output from the child of ${id} within 10 s`)), 10_000);
        let text = '';
        socket.setEncoding('latin1').on('data', (chunk: string) => {
          text += chunk;
          heardSoFar.set(id, text);
        });
        socket.on('end', () => {
          clearTimeout(timer);
          resolve(text);
        });
      }),
    exit: () => exited,
  };
}

/** A request as tlsd frames it (src/launch/spawn-helper.ts): header line, then NUL-ended fields. */
function request(id: number, argv: string[], env: string[]): Buffer {
  const body = Buffer.from([...argv, ...env].map((field) => `${field}\0`).join(''));
  return Buffer.concat([Buffer.from(`S ${id} ${argv.length} ${env.length} ${body.length}\n`), body]);
}

/** The three reports of a child that started: its stdin and stdout descriptors, then its pid. */
async function expectStarted(t: Test, helper: Helper, id: number): Promise<number> {
  t.same(await helper.next(), { stdin: id, handle: 1 }, `${id}: tlsd's end of its stdin`);
  t.same(await helper.next(), { stdout: id, handle: 1 }, `${id}: tlsd's end of its stdout`);
  const started = await helper.next();
  t.match(started, { started: id, pid: Number }, `${id}: started`);
  return started === 'timeout' ? 0 : started.pid!;
}

t.test('ready with a descriptor; a request is answered with descriptors, its pid, its output and its exit; K kills', async (t) => {
  const helper = startHelper(t);
  t.same(await helper.next(), { ready: 2, handle: 1 }, 'ready, with a descriptor');
  helper.send(request(1, ['sh', '-c', 'echo "$GREETING $0 ${NODE_CHANNEL_FD-none}"; ls /proc/$$/fd; true'], ['GREETING=hello']));
  await expectStarted(t, helper, 1);
  t.equal(await helper.output(1), 'hello sh none\n0\n1\n2\n', 'argv and the added environment reach the child; it holds 0, 1 and 2, never the channel');
  t.same(await helper.next(), { exited: 1, status: 0 }, 'its exit status');
  helper.send(request(2, ['sh', '-c', 'read line; echo "got $line"; exec sleep 30'], []));
  await expectStarted(t, helper, 2);
  const output = helper.output(2);
  helper.input(2)!.write('a line\n');
  await helper.heard(2, 'got a line\n');
  helper.send('K 2 15\n');
  t.same(await helper.next(), { exited: 2, signal: 15 }, 'killed by SIGTERM');
  t.equal(await output, 'got a line\n', "tlsd's end of stdin reaches the child, and its stdout ends with it");
  helper.proc.stdin!.end();
  t.equal((await helper.exit()).code, 0, 'leaves when its stdin ends');
});

t.test('a command that cannot run is reported failed, with no descriptor', async (t) => {
  const helper = startHelper(t);
  t.same(await helper.next(), { ready: 2, handle: 1 });
  helper.send(request(3, ['tlsd-test-no-such-command'], []));
  t.same(await helper.next(), { failed: 3, errno: 2 }, 'ENOENT');
  // More K lines than one read takes (64 KiB), for children it does not have: nothing to answer.
  helper.send('K 999 15\n'.repeat(10_000));
  helper.send(request(4, ['echo', 'still here'], []));
  await expectStarted(t, helper, 4);
  t.equal(await helper.output(4), 'still here\n');
  t.same(await helper.next(), { exited: 4, status: 0 });
});

t.test('a request tlsd never sends ends the helper with status 3, and nothing after it is run', async (t) => {
  const body = (text: string): string => `${text.length}\n${text}`;
  const malformed: [string, string][] = [
    [`S 10 0 0 ${body('a\0')}`, 'no argv'],
    [`S 11 1 0 ${body('ab')}`, 'a body without its final NUL'],
    [`S 12 3 0 ${body('a\0b\0')}`, 'fewer fields than counted'],
    [`S 13 1 0 ${body('a\0b\0')}`, 'more fields than counted'],
    [`S 14 4611686018427387904 4611686018427387903 ${body('a\0'.repeat(32))}`, 'counts that would overflow'],
    [`S 15 1 0 ${128 << 20}\n`, 'a body over 64 MiB'],
    ['S 16\n', 'a header cut short'],
    [`S 17 x 1 0 ${body('a\0')}`, 'an old request with a token'],
    ['K 5\n', 'a K line without a signal'],
    ['Q 1 2 3\n', 'an unknown request'],
    [`${'S'.repeat(200)}`, 'a line longer than any request'],
  ];
  for (const [text, what] of malformed) {
    const helper = startHelper(t);
    t.same(await helper.next(), { ready: 2, handle: 1 }, `${what}: ready`);
    // A good request glued after it: a helper that read on would run it.
    helper.send(Buffer.concat([Buffer.from(text), request(20, ['echo', 'ran'], [])]));
    const { code, stderr } = await helper.exit();
    t.equal(code, 3, `${what}: exit status 3`);
    t.match(stderr, /^tlsd spawn helper: malformed request \(.+\); leaving\n$/, `${what}: one line says why`);
    t.equal(await helper.next(100), 'timeout', `${what}: nothing after it was run`);
  }
});

t.test('started without the IPC channel, or with other arguments: a usage line and status 2', async (t) => {
  const noChannel = spawn(builtSpawnHelper, SPAWN_HELPER_ARGUMENTS, { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  noChannel.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const [code] = (await once(noChannel, 'close')) as [number | null];
  t.equal(code, 2);
  t.equal(stderr, 'tlsd spawn helper: no IPC channel from tlsd (NODE_CHANNEL_FD)\n');
  const old = startHelper(t, ['tlsd-spawn-1234-abcdef']);
  const result = await old.exit();
  t.equal(result.code, 2, 'the argument of the old protocol (a socket name) is refused');
  t.match(result.stderr, /^usage: tlsd-spawn-helper --protocol 2/);
});

/**
 * A child that appends `hup` to `file` for each SIGHUP it gets and `end` when it ends: after
 * `rounds` tenths of a second, or half a second after a SIGHUP (time for a second one to show).
 */
function hupCounter(file: string, rounds: number): string[] {
  return ['sh', '-c', 'trap \'echo hup >> "$1"; n=5\' HUP; n=$2; echo ready; while [ "$n" -gt 0 ]; do sleep 0.1; n=$((n - 1)); done; echo end >> "$1"', 'sh', file, String(rounds)];
}

/**
 * tlsd disappears (`leave` closes its end of stdin or of the channel) while the helper has two
 * children running and one it has reaped; returns what each running child's file holds then.
 */
async function orphan(t: Test, endSignal: NodeJS.Signals | undefined, rounds: number, leave: (helper: Helper) => void): Promise<string[]> {
  const dir = tempDir();
  const helper = startHelper(t, spawnHelperArguments(endSignal));
  t.same(await helper.next(), { ready: 2, handle: 1 }, 'ready');
  helper.send(request(1, ['true'], []));
  await expectStarted(t, helper, 1);
  t.same(await helper.next(), { exited: 1, status: 0 }, 'a child that exited and was reaped');
  const outputs: Promise<string>[] = [];
  for (const id of [2, 3]) {
    helper.send(request(id, hupCounter(join(dir, `child-${id}`), rounds), []));
    await expectStarted(t, helper, id);
    outputs.push(helper.output(id));
    await helper.heard(id, 'ready\n');
  }
  leave(helper);
  const { code, stderr } = await withDeadline(helper.exit(), 10_000, 'the helper leaving');
  t.equal(code, 0, 'the helper leaves with status 0');
  t.equal(stderr, '', 'and says nothing (the reaped child is no error)');
  t.same(await Promise.all(outputs), ['ready\n', 'ready\n'], 'both children ended');
  return [2, 3].map((id) => readFileSync(join(dir, `child-${id}`), 'utf8'));
}

t.test('--end-signal: when tlsd is gone, each child the helper has not reaped gets that signal once', async (t) => {
  t.same(spawnHelperArguments('SIGHUP'), ['--protocol', '2', '--end-signal', '1'], 'tlsd passes the number after the protocol');
  const stdinClosed = await orphan(t, 'SIGHUP', 50, (helper) => helper.proc.stdin!.end());
  t.same(stdinClosed, ['hup\nend\n', 'hup\nend\n'], 'its stdin ended: both running children got SIGHUP once');
  const channelClosed = await orphan(t, 'SIGHUP', 50, (helper) => helper.proc.disconnect());
  t.same(channelClosed, ['hup\nend\n', 'hup\nend\n'], 'its channel closed: both running children got SIGHUP once');
});

t.test('without --end-signal, children get no signal when tlsd is gone', async (t) => {
  t.same(spawnHelperArguments(undefined), SPAWN_HELPER_ARGUMENTS);
  const files = await orphan(t, undefined, 15, (helper) => {
    helper.proc.stdin!.end();
    helper.proc.disconnect();
  });
  t.same(files, ['end\n', 'end\n'], 'both ran to their end, unsignalled');
});

t.test('an --end-signal that is not a signal number: one line and status 2', async (t) => {
  for (const value of ['x', '0', '65', '+1', '']) {
    const helper = startHelper(t, [...SPAWN_HELPER_ARGUMENTS, '--end-signal', value]);
    const { code, stderr } = await withDeadline(helper.exit(), 10_000, `--end-signal ${JSON.stringify(value)}`);
    t.equal(code, 2, `${JSON.stringify(value)}: status 2`);
    t.equal(stderr, `tlsd spawn helper: --end-signal takes a signal number from 1 to 64, not "${value}"\n`, `${JSON.stringify(value)}: one line says why`);
  }
});

t.test('descriptors the helper inherited beyond its own never reach a child', async (t) => {
  // Node's spawn passes stdio entries 4 and 5 on without close-on-exec, as a careless parent would.
  const proc = spawn(builtSpawnHelper, SPAWN_HELPER_ARGUMENTS, { stdio: ['pipe', 'ignore', 'inherit', 'ipc', 'pipe', 'pipe'], detached: true });
  t.teardown(() => {
    try {
      process.kill(-proc.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  const messages: Report[] = [];
  let stdout: Socket | undefined;
  proc.on('message', (message: Report, handle?: Socket) => {
    messages.push(message);
    if (message.stdout !== undefined) stdout = handle;
    else handle?.destroy();
  });
  proc.stdin!.write(request(1, ['sh', '-c', 'ls /proc/$$/fd; true'], []));
  const deadline = Date.now() + 10_000;
  while (!messages.some((m) => m.exited === 1) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.ok(stdout, 'the child started');
  let listed = '';
  stdout?.setEncoding('latin1').on('data', (chunk: string) => (listed += chunk));
  await new Promise((resolve) => (stdout ? stdout.once('end', resolve) : resolve(undefined)));
  t.equal(listed, '0\n1\n2\n', 'the child holds 0, 1 and 2 only');
  const helperFds = readdirSync(`/proc/${proc.pid}/fd`).map(Number).sort((a, b) => a - b);
  t.same(helperFds, [0, 1, 2, 3, 4], 'the helper itself closed 4 and 5: it holds its stdio, the channel at 3 and its signalfd');
  proc.stdin!.end();
});
