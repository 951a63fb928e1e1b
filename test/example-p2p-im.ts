import { appendFileSync, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { connectTls } from './lib/client.js';
import { makeIdentity, tempDir } from './lib/identity.js';
import {
  example,
  isFifo,
  lockIsFree,
  programsDir,
  readFifo,
  runCommand,
  startClient,
  startNode,
  until,
  writeFifo,
  type ImClient,
  type ImNode,
} from './lib/p2p-im.js';

// examples/p2p-im end to end: two IM nodes (tlsd-im.sh, each with its own identity, directory and
// port on loopback), the per-peer lock, the reconnect script after a crash, and the client driven
// through its stdin and stdout. The subtests are one story and share the nodes, in order.

/** The nodes and clients live through every subtest, so they are cleaned up with the file. */
const suite = t;
const root = tempDir('p2p-im-test-');
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const alice = makeIdentity(root, 'alice');
const bob = makeIdentity(root, 'bob');
const carol = makeIdentity(root, 'carol');
const env: NodeJS.ProcessEnv = {
  ...process.env,
  PATH: `${programsDir(root)}:${process.env.PATH ?? ''}`,
  TLSD_SYSLOG_SOCKET: '/nonexistent/tlsd-test-log',
};
const aliceDir = join(root, 'alice');
const bobDir = join(root, 'bob');
/** Alice's side of her link with Bob, and Bob's side of his with Alice. */
const aliceToBob = join(aliceDir, bob.fingerprint);
const bobToAlice = join(bobDir, alice.fingerprint);
const bobAliases = join(root, 'bob-aliases');
writeFileSync(bobAliases, `# Bob's contacts\n${alice.fingerprint} alice\n`);
const bobLabel = bob.fingerprint.slice(0, 12);

const reconnect = (dir: string): ReturnType<typeof runCommand> => runCommand(example('tlsd-im-reconnect.sh'), [dir], { env });
const count = (text: string, pattern: RegExp): number => text.match(new RegExp(pattern.source, 'g'))?.length ?? 0;
const refusal = (fingerprint: string): RegExp => new RegExp(`tlsd-im-cmd: ${fingerprint} is connected already; refusing a second connection`);

let aliceNode: ImNode;
let bobNode: ImNode;
let bobClient: ImClient;
let aliceClient: ImClient;

t.before(async () => {
  [aliceNode, bobNode] = await Promise.all([
    startNode(suite, { identity: alice, dir: aliceDir, env, port: 0 }),
    startNode(suite, { identity: bob, dir: bobDir, env, port: 0 }),
  ]);
});

t.test('a dial line in connect links the nodes; messages go both ways through the FIFOs', async (t) => {
  // Shared with a group of local users, nobody else; set-group-ID so peer directories keep the group.
  t.equal(statSync(aliceDir).mode & 0o7777, 0o2770, 'the daemon made the directory, mode 2770');
  t.ok(isFifo(join(aliceDir, 'connect')), 'and the connect FIFO');
  t.equal(statSync(join(aliceDir, 'connect')).mode & 0o777, 0o620, 'writable by the group');
  await writeFifo(join(aliceDir, 'connect'), `127.0.0.1 ${bobNode.port}`, env);
  await until('both sides have their FIFOs', () => isFifo(join(aliceToBob, 'in')) && isFifo(join(bobToAlice, 'out')));
  t.ok(existsSync(join(aliceToBob, 'lock')) && existsSync(join(bobToAlice, 'lock')), 'each side has a lock file for the other');
  t.notOk(lockIsFree(join(aliceToBob, 'lock')), "Alice's session holds her lock for Bob");

  const atBob = readFifo(join(bobToAlice, 'out'), env);
  await writeFifo(join(aliceToBob, 'in'), 'hello bob', env);
  t.equal(await atBob, 'hello bob\n', 'Alice to Bob');
  const atAlice = readFifo(join(aliceToBob, 'out'), env);
  await writeFifo(join(bobToAlice, 'in'), 'hello alice', env);
  t.equal(await atAlice, 'hello alice\n', 'Bob to Alice');

  writeFileSync(join(aliceToBob, 'address'), `127.0.0.1 ${bobNode.port}\n`);
});

t.test('a second simultaneous connection from the same peer is refused by the lock', async (t) => {
  // Alice's key, a second time, from a plain TLS client that keeps its side open: Bob's side ends
  // the connection without a word (a second std2fifo would keep it open, waiting).
  const second = await connectTls(bobNode.port, alice);
  t.teardown(() => void second.destroy());
  const reply = await new Promise<string>((resolve, reject) => {
    let data = '';
    const timer = setTimeout(() => reject(new Error(`the second connection was not ended; got ${JSON.stringify(data)}`)), 15_000);
    second.on('data', (chunk: Buffer) => (data += chunk.toString()));
    second.once('end', () => {
      clearTimeout(timer);
      resolve(data);
    });
  });
  t.equal(reply, '', 'ended, with nothing sent');
  t.ok(await bobNode.waitFor(refusal(alice.fingerprint)), "Bob's log says why");

  // Alice's daemon dialing Bob again while linked: both sides refuse the newcomer.
  await writeFifo(join(aliceDir, 'connect'), `127.0.0.1 ${bobNode.port}`, env);
  t.ok(await aliceNode.waitFor(refusal(bob.fingerprint)), 'refused on the side that dialed');
  await until("Bob's side refused it too", () => count(bobNode.stderr(), refusal(alice.fingerprint)) === 2);

  const atBob = readFifo(join(bobToAlice, 'out'), env);
  await writeFifo(join(aliceToBob, 'in'), 'still here', env);
  t.equal(await atBob, 'still here\n', 'the first connection goes on');
});

t.test('the client lists peers with aliases, shows incoming lines and sends to the chosen peer', async (t) => {
  bobClient = startClient(suite, ['-a', bobAliases, bobDir], env);
  t.ok(await bobClient.waitFor(new RegExp(`^ +1 +alice +${alice.fingerprint} +connected$`, 'm')), 'peer 1 listed by alias, connected');

  await writeFifo(join(aliceToBob, 'in'), 'hi from the fifo', env);
  t.ok(await bobClient.waitFor(/^\[alice\] hi from the fifo$/m), 'an incoming line is shown with the alias');

  let atAlice = readFifo(join(aliceToBob, 'out'), env);
  bobClient.type('/to alice');
  bobClient.type('hello from the client');
  t.equal(await atAlice, 'hello from the client\n', 'a plain line goes to the peer chosen with /to');
  atAlice = readFifo(join(aliceToBob, 'out'), env);
  bobClient.type('/msg 1 a line for peer number one');
  t.equal(await atAlice, 'a line for peer number one\n', '/msg by number');

  // A peer cannot drive our terminal: the escape character is shown, not written.
  await writeFifo(join(aliceToBob, 'in'), '\u001b[2Jcleared?', env);
  t.ok(await bobClient.waitFor(/^\[alice\] \ufffd\[2Jcleared\?$/m), 'the escape character is replaced');
  t.notOk(bobClient.output().includes('\u001b'), 'no escape character reaches the output');

  // Now both ends have a client: Alice's has no aliases, so Bob is a fingerprint prefix.
  aliceClient = startClient(suite, [aliceDir], env);
  t.ok(await aliceClient.waitFor(new RegExp(`^ +1 +- +${bob.fingerprint} +connected +127\\.0\\.0\\.1 ${bobNode.port}$`, 'm')), 'no alias; the address shown');
  aliceClient.type(`/msg ${bob.fingerprint.slice(0, 8)} hi bob, from a client`);
  t.ok(await bobClient.waitFor(/^\[alice\] hi bob, from a client$/m), 'client to client, by fingerprint prefix');
  bobClient.type('and back, client to client');
  t.ok(await aliceClient.waitFor(new RegExp(`^\\[${bobLabel}\\] and back, client to client$`, 'm')), 'and back, shown by fingerprint');
});

t.test('the client notices a new peer without a restart, and its alias once added', async (t) => {
  const mark = bobClient.output().length;
  const socket = await connectTls(bobNode.port, carol);
  t.teardown(() => void socket.destroy());
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
  t.ok(await bobClient.waitFor(new RegExp(`^\\* new peer 2: ${carol.fingerprint}$`, 'm'), 15_000, mark), 'the new peer is announced');

  // tlsd's rules for the alias file: a second peer under an alias taken already is refused.
  appendFileSync(bobAliases, `${carol.fingerprint} alice\n`);
  socket.write('not alice\n');
  t.ok(await bobClient.waitFor(new RegExp(`^\\[${carol.fingerprint.slice(0, 12)}\\] not alice$`, 'm'), 15_000, mark), 'a duplicate alias is not given to a second peer');
  t.ok(await bobClient.waitFor(new RegExp(`^! ${bobAliases}, line 3: the alias "alice" is listed already; line skipped$`, 'm'), 15_000, mark), 'the skipped line is reported');

  appendFileSync(bobAliases, `${carol.fingerprint} carol\n`);
  socket.write('carol here\n');
  t.ok(await bobClient.waitFor(/^\[carol\] carol here$/m), "the new peer's line is shown with the alias just added");
  bobClient.type('/peers');
  t.ok(await bobClient.waitFor(new RegExp(`^ +2 +carol +${carol.fingerprint} +connected$`, 'm'), 15_000, mark), 'listed as peer 2');

  bobClient.type('/msg carol hello carol');
  await until('Carol gets the line', () => received === 'hello carol\n');
  t.equal(received, 'hello carol\n', 'the line reaches the new peer');

  socket.end();
  await until("Carol's session is over", () => lockIsFree(join(bobDir, carol.fingerprint, 'lock')));
  const before = bobClient.output().length;
  bobClient.type('/msg carol anyone there?');
  t.ok(await bobClient.waitFor(/^! carol is not connected; not sent: anyone there\?$/m, 15_000, before), 'an offline peer: said so, not queued');
});

t.test('after a crash the reconnect script restores the link, and messaging resumes', async (t) => {
  let result = await reconnect(aliceDir);
  t.equal(result.status, 0, `exit 0 ${result.stderr}`);
  t.equal(result.stdout, '', 'a connected peer is not dialed');

  await bobNode.crash();
  // The kernel drops the locks of the killed processes, and Alice's session ends with the link.
  await until("Alice's lock for Bob is free", () => lockIsFree(join(aliceToBob, 'lock')));
  t.ok(existsSync(join(bobToAlice, 'lock')), "Bob's lock file is still there after the crash");
  t.ok(lockIsFree(join(bobToAlice, 'lock')), '...but nobody holds it');

  bobNode = await startNode(suite, { identity: bob, dir: bobDir, env, port: bobNode.port });
  result = await reconnect(aliceDir);
  t.equal(result.status, 0, `exit 0 ${result.stderr}`);
  t.equal(result.stdout, `tlsd-im-reconnect: dialing ${bob.fingerprint} at 127.0.0.1 ${bobNode.port}\n`, 'Bob is dialed');
  t.ok(await bobNode.waitFor(new RegExp(`connected as SERVER, peer SHA256 ${alice.fingerprint}`)), 'the restarted Bob has Alice back');

  // The clients kept running through the crash and simply go on.
  await writeFifo(join(aliceToBob, 'in'), 'after the restart', env);
  t.ok(await bobClient.waitFor(/^\[alice\] after the restart$/m), 'Alice to Bob again');
  bobClient.type('/msg alice welcome back');
  t.ok(await aliceClient.waitFor(new RegExp(`^\\[${bobLabel}\\] welcome back$`, 'm')), 'Bob to Alice again');
});

t.test('the reconnect script pins the fingerprint: an address that leads to someone else gets no session', async (t) => {
  // Alice believes Carol lives at Bob's address.
  const carolDir = join(aliceDir, carol.fingerprint);
  mkdirSync(carolDir);
  writeFileSync(join(carolDir, 'address'), `127.0.0.1 ${bobNode.port}\n`);
  const result = await reconnect(aliceDir);
  t.equal(result.stdout, `tlsd-im-reconnect: dialing ${carol.fingerprint} at 127.0.0.1 ${bobNode.port}\n`, 'only Carol, Bob being connected');
  t.ok(await aliceNode.waitFor(new RegExp(`fingerprint mismatch: expected ${carol.fingerprint}, got ${bob.fingerprint}`)), 'tlsd hangs up');
  t.notOk(isFifo(join(carolDir, 'in')), 'no session for "Carol"');
});

t.test('the scripts refuse unsafe peer names and bad address files', async (t) => {
  const dir = join(root, 'hostile');
  mkdirSync(dir);
  // 64 characters, as a fingerprint has, but climbing out of the directory.
  const climber = `../${'e'.repeat(61)}`;
  const escaped = join(root, 'e'.repeat(61));
  const result = await runCommand(example('tlsd-im-cmd.sh'), [dir], { env: { ...env, SHA256: climber } });
  t.equal(result.status, 1, 'tlsd-im-cmd.sh exits 1');
  t.match(result.stderr, /refusing a peer without a valid SHA256 fingerprint/, 'and says why');
  t.notOk(existsSync(escaped), 'nothing made outside the directory');

  // An address is data, never code; and with no daemon reading connect the script gives up.
  const pwned = join(root, 'pwned');
  const mkfifo = await runCommand('mkfifo', [join(dir, 'connect')], { env });
  t.equal(mkfifo.status, 0, 'a connect FIFO that no daemon reads');
  mkdirSync(join(dir, 'a'.repeat(64)));
  writeFileSync(join(dir, 'a'.repeat(64), 'address'), `$(touch ${pwned}) 1\n`);
  mkdirSync(join(dir, 'b'.repeat(64)));
  writeFileSync(join(dir, 'b'.repeat(64), 'address'), '127.0.0.1 1\n');
  const run = await reconnect(dir);
  t.equal(run.status, 1, 'tlsd-im-reconnect.sh exits 1');
  t.match(run.stderr, new RegExp(`${'a'.repeat(64)}/address: bad host name or address`), 'the bad address is reported');
  t.match(run.stderr, /cannot write to .*connect: is tlsd-im\.sh running\?/, 'no daemon: it gives up');
  t.equal(run.stdout, '', 'nothing dialed');
  t.notOk(existsSync(pwned), 'the address was not run');
});
