import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { exchange } from './lib/client.js';
import { freePort } from './lib/examples.js';
import { tempDir } from './lib/identity.js';
import { cast, quietSyslog, withDeadline } from './lib/limits-faults.js';
import { has, NotifySocket } from './lib/notify.js';
import { bin, root, watch } from './lib/tlsd.js';

const { server, alice } = cast(t);
const units = join(root, 'examples/systemd');

/** The value of `key=` in a unit file (the last one, as systemd reads a single-valued setting). */
function setting(unit: string, key: string): string {
  const values = [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((match) => match[1]!);
  if (values.length === 0) throw new Error(`no ${key}= in the unit`);
  return values.at(-1)!;
}

/** ExecStart= as systemd runs it: %i is the instance, $VAR splits the variable's value at blanks. */
function execStart(unit: string, instance: string, env: Record<string, string>): string[] {
  return setting(unit, 'ExecStart')
    .replaceAll('%i', instance)
    .split(/\s+/)
    .flatMap((word) => (word.startsWith('$') ? (env[word.slice(1)] ?? '').split(/\s+/).filter(Boolean) : [word]));
}

/** KEY=value lines of an EnvironmentFile=, comments and blank lines skipped. */
function environmentFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line);
    if (match) env[match[1]!] = match[2]!;
  }
  return env;
}

t.test('systemd-analyze verify accepts tlsd@.service and tlsd@.socket', async (t) => {
  const dir = tempDir();
  // systemd wants an executable it can find: the unit's bare `tlsd` is what `npm install -g` puts on PATH.
  const service = readFileSync(join(units, 'tlsd@.service'), 'utf8').replace(/^ExecStart=tlsd /m, `ExecStart=${bin('tlsd')} `);
  writeFileSync(join(dir, 'tlsd@5600.service'), service);
  copyFileSync(join(units, 'tlsd@.socket'), join(dir, 'tlsd@5600.socket'));
  const verify = spawnSync('systemd-analyze', ['verify', '--man=no', join(dir, 'tlsd@5600.service'), join(dir, 'tlsd@5600.socket')], { encoding: 'utf8' });
  t.equal(verify.status, 0, `no complaint: ${verify.stderr}`);
  t.equal(verify.stderr, '');

  // The check can fail: a unit naming a program that is not there is refused.
  writeFileSync(join(dir, 'tlsd@5600.service'), service.replace(/^ExecStart=\S+/m, 'ExecStart=/nonexistent/tlsd'));
  const broken = spawnSync('systemd-analyze', ['verify', '--man=no', join(dir, 'tlsd@5600.service')], { encoding: 'utf8' });
  t.not(broken.status, 0, 'a missing ExecStart= program is refused');
});

t.test("the unit's ExecStart= with example.conf's settings, under socket activation, as Type=notify", async (t) => {
  const unit = readFileSync(join(units, 'tlsd@.service'), 'utf8');
  t.equal(setting(unit, 'Type'), 'notify');
  t.equal(setting(unit, 'ExecReload'), '/bin/kill -HUP $MAINPID');
  for (const sandbox of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'PrivateTmp=yes']) t.match(unit, new RegExp(`^${sandbox}$`, 'm'), sandbox);

  // example.conf as shipped, but for the socket unit (no -p) and with the test's identity (the
  // last -k and -c win over the unit's /etc/tlsd paths) and log (-e).
  const example = environmentFile(readFileSync(join(units, 'example.conf'), 'utf8'));
  t.match(example.TLSD_OPTIONS, /^-p 5600 /, 'example.conf sets the port for the service started alone');
  const options = example.TLSD_OPTIONS!.replace(/^-p 5600 /, '');
  const env = { TLSD_OPTIONS: `${options} -e -k ${server.key} -c ${server.cert}`, TLSD_COMMAND: 'cat' };
  const [program, ...args] = execStart(unit, 'hello', env);
  t.equal(program, 'tlsd');
  t.same(args.slice(0, 2), ['-i', 'tlsd@hello'], 'each instance logs under its own name');

  const port = await freePort();
  const notify = new NotifySocket(t);
  const launcher = spawn('systemd-socket-activate', ['-l', `127.0.0.1:${port}`, '-E', 'PATH', '-E', 'NOTIFY_SOCKET', '-E', 'TLSD_SYSLOG_SOCKET', bin('tlsd'), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...quietSyslog, NOTIFY_SOCKET: notify.path },
  });
  const tlsd = watch(launcher);
  t.teardown(async () => {
    if (launcher.exitCode === null && launcher.signalCode === null) {
      launcher.kill('SIGKILL');
      await tlsd.exited;
    }
  });
  await tlsd.waitFor(new RegExp(`Listening on 127\\.0\\.0\\.1:${port}`));
  t.equal(await withDeadline(exchange(port, alice, 'hello\n'), 15_000, 'the first connection is served'), 'hello\n');
  // With --workers the primary logs its Listening line once every worker is up, which can be after
  // the first worker has served this first connection.
  await t.resolves(tlsd.waitFor(new RegExp(`tlsd@hello: Listening on 127\\.0\\.0\\.1, port ${port}\\b`), 10_000), 'serves the socket systemd passed, under the instance name');
  await notify.waitFor(has('READY', '1'), 'READY=1');

  // ExecReload=, as systemd runs it with $MAINPID: the launcher exec'd tlsd, so its pid is tlsd's.
  execFileSync('/bin/kill', ['-HUP', String(launcher.pid)]);
  const reloading = await notify.waitFor(has('RELOADING', '1'), 'RELOADING=1');
  await notify.waitFor(has('READY', '1'), 'READY=1 after the reload', reloading.index + 1);
  await tlsd.waitFor(/Reloaded key and certificate/);

  launcher.kill('SIGTERM');
  await notify.waitFor(has('STOPPING', '1'), 'STOPPING=1');
  t.equal(await withDeadline(tlsd.exited, 10_000, 'tlsd stops on SIGTERM'), 0);
});
