import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { exchange } from './lib/client.js';
import { scratchDir } from './lib/external.js';
import { opensslFingerprint } from './lib/identity.js';
import { bin, installed, installedPrograms, root, watch, type Teardown } from './lib/tlsd.js';

// Docs move with code: every option a program's --help prints appears in its man page, in the
// README and in its chapter of the manual, so that none of them can drift from the program; and
// the commands the README opens with work as written.
const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { bin: Record<string, string>; man: string[]; scripts: Record<string, string> };
const readme = readFileSync(`${root}README.md`, 'utf8');
const manual = readFileSync(`${root}docs/manual.md`, 'utf8');
const ciRun = readFileSync(`${root}.ci/run`, 'utf8');

function helpOptions(program: string): string[] {
  const help = execFileSync(installed[program]!, ['-h'], { encoding: 'utf8' });
  const flags = new Set<string>();
  for (const line of help.split('\n')) {
    const match = line.match(/^ {2}((?:-{1,2}[a-z][a-z0-9-]*(?:, )?)+)/);
    for (const flag of match?.[1]?.split(', ') ?? []) flags.add(flag);
  }
  return [...flags];
}

/** The manual's chapter of a program: from the `## ` heading that names it in backquotes to the next. */
function manualChapter(program: string): string | undefined {
  return manual.split(/^(?=## )/m).find((chapter) => chapter.split('\n', 1)[0]!.includes(`\`${program}\``));
}

const mentions = (option: string): RegExp => new RegExp(`(^|[^a-z-])${option}([^a-z-]|$)`, 'm');

for (const program of Object.keys(pkg.bin)) {
  t.test(`${program}: --help, man page, README and manual agree`, async (t) => {
    const options = helpOptions(program);
    t.ok(options.length >= 4, `${program} -h lists its options (${options.join(' ')})`);
    const manFile = pkg.man.find((file) => file.endsWith(`/${program}.1`));
    t.ok(manFile, `package.json installs a man page for ${program}`);
    const man = readFileSync(`${root}${manFile}`, 'utf8').replace(/\\-/g, '-').replace(/\\f[BIRP]/g, '');
    const chapter = manualChapter(program);
    t.ok(chapter, `docs/manual.md has a chapter headed with \`${program}\``);
    for (const option of options) {
      t.match(man, mentions(option), `${manFile} documents ${option}`);
      t.match(readme, mentions(option), `README documents ${program} ${option}`);
      t.match(chapter ?? '', mentions(option), `docs/manual.md documents ${program} ${option} in its chapter`);
    }
  });
}

// ---- The README's opening: the commands a newcomer runs first ----

/** The fenced shell blocks before the README's first `## ` heading, continuation lines joined. */
const opening = [...readme.split(/^## /m)[0]!.matchAll(/^```(?:sh|shell|bash)\n([\s\S]*?)^```$/gm)].map((match) =>
  match[1]!.replace(/\\\n\s*/g, ' ').trim(),
);
const runBlock = opening[0] ?? '';
const testBlock = opening[1] ?? '';
const clientBlock = opening.slice(2).find((block) => /\b(s_client|gnutls-cli|ncat|socat)\b/.test(block));

/** What may come before tlsd in the run command: installing from the checkout, as .ci/run does. */
const installSteps = new Set(['npm ci', 'npm install -g .', 'npm link']);

/** A port nobody listens on right now (on loopback). */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

/**
 * Runs a README command line with `sh -c` in its own process group, as a newcomer would in a
 * terminal: the checkout's `./bin/NAME.js` and the installed names (`tlsd`, `npx tlsd`) both run
 * our programs. The whole group is killed at teardown.
 */
function runReadmeCommand(t: Teardown, command: string, home: string, stdin: 'pipe' | 'ignore'): ChildProcess {
  const programs = join(home, 'bin');
  if (!existsSync(programs)) installedPrograms(programs);
  // The system identity directory (/etc/tls) of a fresh machine, whatever this one's holds.
  const systemDir = join(home, 'etc-tls');
  mkdirSync(systemDir, { recursive: true });
  const line = command.replaceAll('./bin/', `${root}bin/`).replace(/\bnpx (?=tlsd|fp2alias|std2fifo)/g, '');
  const proc = spawn('sh', ['-c', line], {
    cwd: home,
    detached: true,
    stdio: [stdin, 'pipe', 'pipe'],
    env: {
      ...process.env,
      HOME: home,
      XDG_CONFIG_HOME: join(home, '.config'),
      PATH: `${programs}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log',
      TLSD_SYSTEM_DIR: systemDir,
    },
  });
  const exited = once(proc, 'exit').catch(() => undefined); // 'error': sh itself did not start
  t.teardown(async () => {
    try {
      process.kill(-proc.pid!, 'SIGKILL');
    } catch {
      // the group is gone already
    }
    if (proc.exitCode === null && proc.signalCode === null) await exited;
  });
  return proc;
}

t.test('README: it opens with two commands, one that installs and runs tlsd and one that runs the tests', async (t) => {
  t.ok(opening.length >= 2, `the README's opening has at least two shell blocks (${opening.length})`);
  const steps = runBlock.split(/\s*&&\s*/);
  const tlsd = steps.pop() ?? '';
  t.match(tlsd, /^(\.\/bin\/tlsd\.js|tlsd|npx tlsd) /, `the first command runs tlsd: ${runBlock}`);
  for (const step of steps) {
    t.ok(installSteps.has(step), `"${step}" installs from the checkout`);
    if (step === 'npm ci') t.match(ciRun, /^npm ci\b/m, '.ci/run installs with npm ci as well');
  }
  t.equal(testBlock, 'npm test', 'the second command is npm test');
  t.ok(pkg.scripts.test, 'package.json has a test script');
  t.match(pkg.scripts.test, /\btap\b/, 'which runs tap');
  const ciInstall = ciRun.search(/^npm ci\b/m);
  const ciTest = ciRun.search(/^npm test\b/m);
  t.ok(ciInstall >= 0 && ciTest > ciInstall, '.ci/run runs npm ci, then the same npm test');
});

t.test('README: the run command really serves a client with a certificate', { timeout: 60_000 }, async (t) => {
  const tlsd = runBlock.split(/\s*&&\s*/).pop() ?? '';
  t.match(tlsd, /tlsd/, 'there is a tlsd command to run');
  // The install steps are not run here: `npm test` has just built this checkout, and `npm ci`
  // would pull node_modules from under the tests running beside this one.
  const home = scratchDir(t, 'tlsd-readme-');
  // tlsd's own options: what comes before `--` (after it, `sh -c` is the child's).
  const options = tlsd.split(' -- ')[0]!;
  const named = options.match(/(?:^|\s)(?:-p|--port)[ =]?(\d+)(?=\s|$)/)?.[1];
  const port = await freePort();
  const withPort = (command: string): string => (named ? command.replace(new RegExp(`\\b${named}\\b`, 'g'), String(port)) : command);

  const proc = runReadmeCommand(t, withPort(tlsd), home, 'ignore');
  proc.stdout!.resume();
  const log = watch(proc);
  const listening = await log.waitFor(/Listening on (\S+), port (\d+)/, 20_000);
  if (named) t.equal(Number(listening[2]), port, `it listens on the port given (${named} in the README, ${port} here)`);
  const bound = options.match(/(?:^|\s)(?:-b|--bind)[ =]?(\S+)/)?.[1];
  if (bound) t.equal(listening[1], bound, `on the address given (${bound})`);
  const actualPort = Number(listening[2]);

  const ours = (await log.waitFor(/Our certificate's SHA256: ([0-9a-f]{64})/))[1];
  if (!/(^|\s)(-k|--key|-c|--cert)\b/.test(options)) {
    const dir = join(home, '.config', 'tlsd');
    t.match(log.stderr(), `Created a new identity: ${dir}/key.pem and ${dir}/cert.pem`, 'on first use it makes its identity in ~/.config/tlsd');
    t.equal(statSync(join(dir, 'key.pem')).mode & 0o777, 0o600, 'with a private key');
    t.equal(ours, opensslFingerprint(join(dir, 'cert.pem')), 'and logs its fingerprint');
  }

  // A client with a certificate of its own gets the child's output: its fingerprint, and an echo.
  const peerDir = join(home, 'peer');
  mkdirSync(peerDir);
  const peer = { key: join(peerDir, 'key.pem'), cert: join(peerDir, 'cert.pem'), fingerprint: '' };
  peer.fingerprint = execFileSync(bin('tlsd-keygen'), ['-k', peer.key, '-c', peer.cert], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  const reply = await exchange(actualPort, peer, 'ping from test/docs.ts\n');
  t.match(reply, peer.fingerprint, `the child saw the client's SHA256: ${JSON.stringify(reply)}`);
  t.match(reply, 'ping from test/docs.ts\n', 'and what the client sent came back');

  if (clientBlock) {
    // The README's own client command, run as written in another "terminal".
    const client = runReadmeCommand(t, withPort(clientBlock), home, 'pipe');
    let output = '';
    client.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    client.stderr!.resume();
    client.stdin!.on('error', () => {});
    client.stdin!.write('hello from the README client\n');
    const printed = (): string | undefined => output.match(/^[0-9a-f]{64}$/m)?.[0];
    const served = (): boolean => {
      const fingerprint = printed();
      return fingerprint !== undefined && output.split(fingerprint).length > 2 && output.includes('hello from the README client\n');
    };
    const deadline = Date.now() + 20_000;
    while (!served() && Date.now() < deadline && client.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 50));
    const fingerprint = printed();
    t.ok(fingerprint, `the README's client command made an identity and printed its fingerprint: ${JSON.stringify(output)}`);
    t.ok(fingerprint && output.split(fingerprint).length > 2, `the child's output, with that fingerprint, reached the README's client: ${JSON.stringify(output)}`);
    t.match(output, 'hello from the README client\n', "and the child's echo");
  }
});
