// `npm install -g` as the README says it, by an ordinary user with a prefix of their own: packs
// this checkout, installs the tarball from nothing (an empty npm cache and home, so every
// dependency comes from the registry and every native part is compiled), and uses the installed
// programs from PATH: tlsd-keygen makes the identities, tlsd serves an echo through fp2alias to
// openssl s_client, std2fifo makes its FIFOs, and man finds tlsd(1).
import { execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import t, { type Test } from 'tap';
import { scratchDir, startClient } from './lib/external.js';
import { opensslFingerprint } from './lib/identity.js';
import { root, watch } from './lib/tlsd.js';

// Installing compiles two native parts and fetches every dependency: on a busy 2-core machine that
// can take minutes, more than the suite's 180 s per file.
t.setTimeout(600_000);

const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { name: string; version: string; bin: Record<string, string>; man: string[] };
const readme = readFileSync(`${root}README.md`, 'utf8');
const tarball = `${pkg.name}-${pkg.version}.tgz`;

/** The README's command that installs the package: the `npm install -g` step of a shell block. */
const readmeInstall = readme
  .split('\n')
  .flatMap((line) => line.split(/\s*&&\s*/))
  .find((step) => step.startsWith('npm install -g ') && step.includes('.tgz'));
/** The README's advice to an ordinary user: a global prefix of their own. */
const readmePrefix = /`(npm config set prefix ~\/\.local)`/.exec(readme)?.[1];

// Run as root (as CI does), the user is uid 65534 (nobody), who owns only the test's directory;
// run as anyone else, that user is already an ordinary one.
const isRoot = process.getuid?.() === 0;
const user = isRoot ? { uid: 65534, gid: 65534 } : {};

/**
 * The environment of a user's shell: this one without what npm and tap set for the test (npm_*
 * config and lifecycle variables, tap's NODE_OPTIONS) and without node_modules/.bin directories on
 * PATH (the checkout's node-gyp among them), this Node first.
 */
function userEnvironment(home: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(npm_|TAP|_TAPJS|NODE_OPTIONS$|NODE$|INIT_CWD$|TS_NODE_)/i.test(name)) env[name] = value;
  }
  const path = (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).filter((dir) => dir !== '' && !dir.includes('node_modules'));
  env.PATH = [join(home, '.local', 'bin'), dirname(process.execPath), ...path].join(delimiter);
  env.HOME = home;
  env.TLSD_SYSLOG_SOCKET = '/nonexistent/tlsd-test-log';
  // This machine reaches the npm registry through the certificate authority its npm is told of, and
  // nothing beyond, so node-gyp cannot download Node's headers: the user's npm gets the same
  // authority and this Node's own headers (its prefix, where include/node is), as root's npm config
  // gives them here. A user online needs neither.
  const cafile = execFileSync('npm', ['config', 'get', 'cafile'], { encoding: 'utf8' }).trim();
  if (cafile && cafile !== 'null' && cafile !== 'undefined') env.npm_config_cafile = cafile;
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node.h'))) env.npm_config_nodedir = prefix;
  // npx must find node-gyp in the installed tree, never fetch one: refuse any prompt.
  env.npm_config_yes = 'false';
  env.npm_config_update_notifier = 'false';
  return env;
}

/**
 * `sh -c command` without the NODE_OPTIONS that tap's process tracking adds to every child it
 * sees started: its hooks live in the checkout, and would write to the checkout's .tap/.
 */
function userShell(command: string): [string, string[]] {
  return ['env', ['-u', 'NODE_OPTIONS', 'sh', '-c', command]];
}

interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a shell command line as the user, in `cwd`, to its end (killed after `ms`). */
function asUser(command: string, cwd: string, env: NodeJS.ProcessEnv, ms: number): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const proc = spawn(...userShell(command), { cwd, env, ...user, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    proc.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => proc.kill('SIGKILL'), ms);
    proc.once('error', reject);
    proc.once('close', (status: number | null) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** A directory the user owns. */
function userDir(path: string): string {
  mkdirSync(path, { recursive: true });
  if (isRoot) chownSync(path, 65534, 65534);
  return path;
}

interface Packed {
  filename: string;
  size: number;
  unpackedSize: number;
  entryCount: number;
  files: Array<{ path: string }>;
}

t.test('the README says how to install for good', async (t) => {
  t.ok(readmeInstall, `the README has an npm install -g command: ${readmeInstall}`);
  t.match(readmeInstall ?? '', tarball, `of this version's tarball, ${tarball}`);
  t.ok(readmePrefix, 'and tells an ordinary user to give npm a prefix of their own');
});

t.test('npm install -g of the packed tarball, by an ordinary user, from the registry alone', { timeout: 540_000 }, async (t) => {
  const work = userDir(scratchDir(t, 'tlsd-install-'));
  const home = userDir(join(work, 'home'));
  const env = userEnvironment(home);

  // `npm test` has just built dist/; packing runs no script, so that nothing rebuilds it under the
  // tests running beside this one.
  const [packed] = JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as Packed[];
  t.equal(packed?.filename, tarball, 'npm pack made the tarball');
  const files = new Set(packed!.files.map((file) => file.path));
  t.comment(`${tarball}: ${packed!.size} bytes packed, ${packed!.unpackedSize} unpacked, ${packed!.entryCount} files`);
  for (const file of [...Object.values(pkg.bin), ...pkg.man, 'LICENSE', 'package.json', 'binding.gyp', 'src/launch/spawn-helper.c']) {
    t.ok(files.has(file.replace(/^\.\//, '')), `the tarball holds ${file}`);
  }
  const extra = [...files].filter((file) => /^(test|bench|scripts|\.ci)\/|\.map$|\.tsx?$|tsconfig/.test(file) || (file.startsWith('dist/') && !/^dist\/[^/]+\.cjs$/.test(file)));
  t.same(extra, [], 'and no tests, bench, scripts, source maps, TypeScript or unbundled modules');
  if (isRoot) chownSync(join(work, tarball), 65534, 65534);

  // The user's npm runs under this Node (a directory the user cannot enter would leave it to another).
  const node = await asUser('node --version', work, env, 30_000);
  t.equal(node.stdout.trim(), process.version, `the user runs Node ${process.version}`);
  const setPrefix = await asUser(readmePrefix ?? 'false', work, env, 60_000);
  t.equal(setPrefix.status, 0, `${readmePrefix}: ${setPrefix.stderr}`);
  const install = await asUser(readmeInstall ?? 'false', work, env, 480_000);
  const output = `${install.stdout}${install.stderr}`;
  const last = output.trimEnd().split('\n').slice(-8).join('\n');
  t.comment(`the install log ends:\n${last}`);
  t.equal(install.status, 0, `${readmeInstall} succeeds`);
  t.notMatch(output, /not yet covered by allowScripts|install-scripts/, 'every install script that ran was approved on the command line');
  t.notMatch(output, /npx canceled|will be installed|Need to install/, 'npx found node-gyp in the installed tree');
  t.notMatch(output, /gyp http GET|gyp WARN install/, 'node-gyp downloaded nothing');

  const prefix = join(home, '.local');
  for (const name of Object.keys(pkg.bin)) t.ok(existsSync(join(prefix, 'bin', name)), `${name} is in the prefix's bin/`);
  t.ok(existsSync(join(prefix, 'lib', 'node_modules', pkg.name, 'build', 'Release', 'tlsd-spawn-helper')), 'the spawn helper was built');
  await usesInstalled(t, work, env, prefix);
});

/** The installed programs, by name from PATH, as the user. */
async function usesInstalled(t: Test, work: string, env: NodeJS.ProcessEnv, prefix: string): Promise<void> {
  const dir = userDir(join(work, 'use'));
  const keygen = await asUser('tlsd-keygen -k server-key.pem -c server-cert.pem && tlsd-keygen -k alice-key.pem -c alice-cert.pem', dir, env, 60_000);
  t.equal(keygen.status, 0, `tlsd-keygen made two identities: ${keygen.stderr}`);
  const alice = opensslFingerprint(join(dir, 'alice-cert.pem'));
  t.match(keygen.stdout, alice, 'and printed their fingerprints');
  writeFileSync(join(dir, 'aliases'), `${alice} alice\n`);

  const version = await asUser('std2fifo --version', dir, env, 30_000);
  t.equal(version.stdout.trim(), pkg.version, 'std2fifo --version');
  userDir(join(dir, 'fifos'));
  const fifos = await asUser('SHA256=peer std2fifo fifos </dev/null', dir, env, 30_000);
  t.equal(fifos.status, 0, `std2fifo ran to the end of its input: ${fifos.stderr}`);
  t.ok(existsSync(join(dir, 'fifos', 'peer', 'in')) && statSync(join(dir, 'fifos', 'peer', 'out')).isFIFO(), 'and made its FIFOs');

  const options: SpawnOptions = { cwd: dir, env, ...user, stdio: ['ignore', 'ignore', 'pipe'] };
  const proc = spawn(...userShell('exec tlsd -e -b 127.0.0.1 -k server-key.pem -c server-cert.pem -- fp2alias -f aliases -- sh -c \'echo "hello, $ALIAS"; exec cat\''), options);
  const tlsd = watch(proc);
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await tlsd.exited;
    }
  });
  const port = (await tlsd.waitFor(/Listening on \S+, port (\d+)/, 30_000))[1]!;
  const client = startClient(t, 'openssl', ['s_client', '-quiet', '-connect', `127.0.0.1:${port}`, '-key', join(dir, 'alice-key.pem'), '-cert', join(dir, 'alice-cert.pem')], { stdin: 'pipe' });
  client.proc.stdin!.write('ping from openssl\n');
  await client.waitForOutput('ping from openssl\n', 30_000);
  t.match(client.stdout().toString(), /^hello, alice\nping from openssl\n/, 'openssl s_client got the greeting fp2alias made, and its echo');
  client.proc.kill('SIGTERM');
  proc.kill('SIGTERM');
  t.equal(await tlsd.exited, 0, 'tlsd ends on SIGTERM');

  const man = await asUser('man -P cat tlsd', dir, { ...env, MANPATH: join(prefix, 'share', 'man'), MANWIDTH: '80' }, 30_000);
  t.equal(man.status, 0, `man tlsd through MANPATH: ${man.stderr}`);
  t.match(man.stdout, /tlsd \S a TLS super-server/, 'shows tlsd(1)');
}
