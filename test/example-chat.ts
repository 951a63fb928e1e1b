import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { makeIdentity, type TestIdentity } from './lib/identity.js';
import { exampleEnv, exampleFile, freePort, runCommand, scratch, startBroker, startService, talk, tcp, type Conversation } from './lib/examples.js';
import type { RunningTlsd, Teardown } from './lib/tlsd.js';

// examples/chat end to end, as its README runs it: `ncat -l --broker` on loopback, and
// `tlsd -- fp2alias -a -f aliases -- tlsd-chat.sh`; users connect with their own certificates
// (Node's tls, and the example's client script over openssl s_client). A plain TCP connection to
// the broker watches what goes through it, so that a test knows when a user's session has reached
// the broker (its join notice is there) before anyone else speaks.

const dir = scratch(t, 'chat-test-');
const env = exampleEnv(dir);
const server = makeIdentity(dir, 'server');
const id = {
  alice: makeIdentity(dir, 'alice'),
  bob: makeIdentity(dir, 'bob'),
  carol: makeIdentity(dir, 'carol'),
  dave: makeIdentity(dir, 'dave'),
  impostor: makeIdentity(dir, 'impostor'),
};
const aliases = join(dir, 'aliases');
// alice and bob are known; carol and dave are newcomers who pick their alias (fp2alias -a).
writeFileSync(aliases, `${id.alice.fingerprint} alice\n${id.bob.fingerprint} bob\n`);
const chatScript = exampleFile('chat', 'tlsd-chat.sh');
const welcome = (alias: string): string => `Welcome, ${alias}. Everyone here reads what you type; end your input (Ctrl-D) to leave.`;
const startedAt = Date.now();

let chat: RunningTlsd;
let observer: Conversation;

t.before(async () => {
  const brokerPort = await freePort();
  await startBroker(t, brokerPort);
  observer = await tcp(t, brokerPort, 'the broker');
  chat = await startService(t, {
    identity: server,
    command: ['fp2alias', '-a', '-f', aliases, '--', chatScript],
    env: { ...env, TLSD_CHAT_BROKER_PORT: String(brokerPort) },
  });
});

/** Connects as a user (registering the alias first if a newcomer) and waits until the broker has the user's session. */
async function enter(t: Teardown, identity: TestIdentity, alias: string, newcomer = false): Promise<Conversation> {
  const mark = observer.text().length;
  const user = await talk(t, chat.port, identity, alias);
  if (newcomer) {
    await user.waitFor("Enter your alias, please.\n");
    user.write(`${alias}\n`);
  }
  await user.waitFor(welcome(alias));
  await observer.waitFor(`*** ${alias} joined at `, mark);
  return user;
}

const NOTICE = /^\*\*\* ([a-z0-9]+) (joined|left) at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC$/;

/**
 * The lines of `text`, with each notice's time checked (the current time, in UTC, give or take a
 * minute for the clocks of the machine) and then left out, so that transcripts can be compared.
 */
function transcript(t: Test, text: string): string[] {
  return text
    .split('\n')
    .slice(0, -1)
    .map((line) => {
      const notice = NOTICE.exec(line);
      if (!notice) return line;
      const at = Date.parse(`${notice[3]!.replace(' ', 'T')}Z`);
      t.ok(at >= startedAt - 60_000 && at <= Date.now() + 60_000, `the time of "${line}" is now`);
      return `*** ${notice[1]} ${notice[2]}`;
    });
}

/** Bytes a terminal would obey: C0 controls but newline, DEL, and C1 controls in UTF-8. */
function controls(bytes: Buffer): number[] {
  const found: number[] = [];
  bytes.forEach((byte, i) => {
    if ((byte < 0x20 && byte !== 0x0a) || byte === 0x7f || (byte === 0xc2 && (bytes[i + 1] ?? 0) >= 0x80 && (bytes[i + 1] ?? 0) <= 0x9f)) found.push(i);
  });
  return found;
}

t.test('three users see the others join, speak and leave, with their aliases, in order', async (t) => {
  const mark = observer.text().length;
  const alice = await enter(t, id.alice, 'alice');
  const bob = await enter(t, id.bob, 'bob');
  await alice.waitFor('*** bob joined');
  const carol = await enter(t, id.carol, 'carol', true);
  await Promise.all([alice.waitFor('*** carol joined'), bob.waitFor('*** carol joined')]);

  alice.write('hello everyone\n');
  await Promise.all([bob.waitFor('<alice> hello everyone\n'), carol.waitFor('<alice> hello everyone\n')]);
  bob.write('hi alice\nhow are you?\n');
  await Promise.all([alice.waitFor('<bob> how are you?\n'), carol.waitFor('<bob> how are you?\n')]);
  carol.write('fine, thanks\n');
  await Promise.all([alice.waitFor('<carol> fine, thanks\n'), bob.waitFor('<carol> fine, thanks\n')]);

  // carol ends her side, as Ctrl-D does; bob's client is killed without a word.
  carol.end();
  await carol.closed();
  await Promise.all([alice.waitFor('*** carol left'), bob.waitFor('*** carol left')]);
  const bobSaw = bob.text();
  bob.destroy();
  await alice.waitFor('*** bob left');
  alice.end();
  await alice.closed();
  await observer.waitFor('*** alice left', mark);

  t.same(transcript(t, alice.text()), [welcome('alice'), '*** bob joined', '*** carol joined', '<bob> hi alice', '<bob> how are you?', '<carol> fine, thanks', '*** carol left', '*** bob left'], 'what alice saw');
  t.same(transcript(t, bobSaw), [welcome('bob'), '*** carol joined', '<alice> hello everyone', '<carol> fine, thanks', '*** carol left'], 'what bob saw');
  t.same(transcript(t, carol.text()), ["Enter your alias, please.", welcome('carol'), '<alice> hello everyone', '<bob> hi alice', '<bob> how are you?'], 'what carol saw');
  t.same(
    transcript(t, observer.text().slice(mark)),
    ['*** alice joined', '*** bob joined', '*** carol joined', '<alice> hello everyone', '<bob> hi alice', '<bob> how are you?', '<carol> fine, thanks', '*** carol left', '*** bob left', '*** alice left'],
    'what went through the broker',
  );
});

t.test("control characters a user sends never reach the others, and nobody can speak as someone else", async (t) => {
  const mark = observer.text().length;
  const alice = await enter(t, id.alice, 'alice');
  const bob = await enter(t, id.bob, 'bob');
  const from = bob.text().length;
  alice.write(
    Buffer.concat([
      Buffer.from('\x1b[2J\x1b]0;owned\x07title\n'),
      Buffer.from('bell\x07 del\x7f back\bspace tab\tcr\r nul\x00 end\r\n'),
      Buffer.from('csi\xc2\x9b31mred, nested \xc2\x1b\x9b x, but \xc3\xa9 stays\n', 'latin1'),
      Buffer.from('\x1b\x07\r\n'),
      Buffer.from('\r<bob> I am bob\n'),
      Buffer.from(`${'x'.repeat(2500)}\n`),
      Buffer.from('done\n'),
    ]),
  );
  await bob.waitFor('<alice> done\n', from);
  const received = bob.bytes().subarray(Buffer.byteLength(bob.text().slice(0, from)));
  t.same(
    received.toString('utf8').split('\n').slice(0, -1),
    [
      '<alice> [2J]0;ownedtitle',
      '<alice> bell del backspace tabcr nul end',
      '<alice> csi31mred, nested  x, but é stays',
      '<alice> <bob> I am bob',
      `<alice> ${'x'.repeat(1000)}`,
      `<alice> ${'x'.repeat(1000)}`,
      `<alice> ${'x'.repeat(500)}`,
      '<alice> done',
    ],
    'bob sees the text without its controls, every line under alice’s name, long lines split',
  );
  t.same(controls(bob.bytes()), [], 'no control character reached bob');
  t.same(controls(Buffer.from(observer.text().slice(mark))), [], 'none went through the broker either');
  alice.end();
  bob.end();
  await Promise.all([alice.closed(), bob.closed()]);
});

t.test('the client script joins over openssl s_client, rings the bell when its name is mentioned, and leaves at the end of its input', async (t) => {
  const alice = await enter(t, id.alice, 'alice');
  const mark = observer.text().length;
  const dave = runCommand(t, exampleFile('chat', 'tls-chat.sh'), ['-k', id.dave.key, '-c', id.dave.cert, '-s', server.cert, '-n', 'dave', '127.0.0.1', String(chat.port)], { env, stdin: 'pipe' });
  await dave.waitFor('Enter your alias, please.\n');
  dave.proc.stdin?.write('dave\n');
  await dave.waitFor(welcome('dave'));
  await observer.waitFor('*** dave joined at ', mark);
  await alice.waitFor('*** dave joined');

  alice.write('Hey Dave, welcome!\nnobody else\n');
  await dave.waitFor('<alice> nobody else\n');
  dave.proc.stdin?.write('hi alice\n');
  await alice.waitFor('<dave> hi alice\n');
  dave.proc.stdin?.end();
  const done = await dave.finished();
  t.equal(done.code, 0, 'the client exits 0 at the end of its input');
  t.equal(done.stdout.toString(), `Enter your alias, please.\n${welcome('dave')}\n<alice> Hey Dave, welcome!\x07\n<alice> nobody else\n`, 'a bell ends the line that mentions dave, and only that one');
  await alice.waitFor('*** dave left');
  alice.end();
  await alice.closed();
});

t.test("the client script refuses a server whose certificate is not the one it was given", async (t) => {
  const mark = observer.text().length;
  const impostor = runCommand(t, exampleFile('chat', 'tls-chat.sh'), ['-k', id.alice.key, '-c', id.alice.cert, '-s', id.impostor.cert, '-n', 'alice', '127.0.0.1', String(chat.port)], { env, stdin: 'pipe' });
  const done = await impostor.finished();
  t.equal(done.code, 1, 'openssl refuses the server, and the client exits 1');
  t.equal(done.stdout.toString(), '', 'nothing from the chat');
  // The same client with the right certificate does get in, so the refusal was the pin's doing.
  const right = runCommand(t, exampleFile('chat', 'tls-chat.sh'), ['-k', id.alice.key, '-c', id.alice.cert, '-s', server.cert, '-n', 'alice', '127.0.0.1', String(chat.port)], { env, stdin: 'pipe' });
  await right.waitFor(welcome('alice'));
  await observer.waitFor('*** alice joined', mark);
  right.proc.stdin?.end();
  t.equal((await right.finished()).code, 0, 'with the right certificate, the same client gets in and leaves');
});

t.test('when the broker goes away, every user is told and the session ends', async (t) => {
  const brokerPort = await freePort();
  const broker = await startBroker(t, brokerPort);
  const watcher = await tcp(t, brokerPort, 'the second broker');
  const service = await startService(t, {
    identity: server,
    command: ['fp2alias', '-a', '-f', aliases, '--', chatScript],
    env: { ...env, TLSD_CHAT_BROKER_PORT: String(brokerPort) },
  });
  const alice = await talk(t, service.port, id.alice, 'alice');
  await alice.waitFor(welcome('alice'));
  await watcher.waitFor('*** alice joined');
  const bob = await talk(t, service.port, id.bob, 'bob');
  await bob.waitFor(welcome('bob'));
  await alice.waitFor('*** bob joined');

  broker.kill('SIGTERM');
  // Neither types anything more: the sessions end on their own.
  await Promise.all([alice.closed(), bob.closed()]);
  t.match(alice.text(), /\n\*\*\* The chat has closed; try again later\.\n$/, 'alice is told, last');
  t.match(bob.text(), /\n\*\*\* The chat has closed; try again later\.\n$/, 'bob is told, last');
  await service.waitFor(/tlsd-chat: the broker at 127\.0\.0\.1 port \d+ closed the connection/);
});

t.test('a user is told when the broker is not running', async (t) => {
  const closedBroker = await freePort();
  const lonely = await startService(t, {
    identity: server,
    command: ['fp2alias', '-a', '-f', aliases, '--', chatScript],
    env: { ...env, TLSD_CHAT_BROKER_PORT: String(closedBroker) },
  });
  const alice = await talk(t, lonely.port, id.alice, 'alice');
  await alice.closed();
  t.equal(alice.text(), 'The chat is closed for now; try again later.\n', 'the user is told, and the connection ends');
  await lonely.waitFor(/tlsd-chat: cannot reach the broker at 127\.0\.0\.1 port \d+/);
});
