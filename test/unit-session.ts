// One Session over a real TLS connection on loopback, with a child that reports its events in an
// order a real launcher produces only by a race: it exits, and never reports `closed` (its stdio
// ended unseen; see test/tlsd-shutdown.ts for the same end to end with the spawn helper). The
// session must still end, without cutting the child's output short.
import { readFileSync } from 'node:fs';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { createServer, type TLSSocket } from 'node:tls';
import t, { type Test } from 'tap';
import type { ChildEvents, ChildLike } from '../src/launch/launch.js';
import { Session } from '../src/core/session.js';
import { Logger } from '../src/log/logger.js';
import { connectTls, readAll } from './lib/client.js';
import { cast, withDeadline } from './lib/limits-faults.js';

const { server, alice } = cast(t);

/** Keeps what would be logged: a session's log lines are not what these tests are about. */
class QuietLogger extends Logger {
  readonly lines: string[] = [];
  constructor() {
    super({ ident: 'unit-session', stderr: false, syslogPath: '/nonexistent/unit-session-log' });
  }
  override log(_severity: string, message: string): void {
    this.lines.push(message);
  }
}

class ReportedChild implements ChildLike {
  readonly pid = 4242;
  readonly stdin = new PassThrough();
  readonly stdout = new PassThrough();
  kill(): boolean {
    return true;
  }
}

interface Running {
  session: Session;
  child: ReportedChild;
  events: ChildEvents;
  /** The peer: reads to our end and never ends its own side. */
  received: Promise<string>;
  /** Resolves when the session calls `ended`. */
  ended: Promise<void>;
  isEnded(): boolean;
}

/** A TLS server on loopback whose one connection gets a Session; the peer is Node's TLS client. */
async function running(t: Test): Promise<Running> {
  const tls = createServer({ key: readFileSync(server.key), cert: readFileSync(server.cert), requestCert: true, rejectUnauthorized: false });
  t.teardown(() => void tls.close());
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
  const accepted = once(tls, 'secureConnection') as Promise<[TLSSocket]>;
  const peer = await connectTls((tls.address() as AddressInfo).port, alice);
  peer.on('error', () => {});
  t.teardown(() => void peer.destroy());
  const [socket] = await accepted;
  socket.allowHalfOpen = true; // as the listener does
  const child = new ReportedChild();
  let events: ChildEvents | undefined;
  let done = false;
  let endedNow: () => void = () => {};
  const ended = new Promise<void>((resolve) => (endedNow = resolve));
  const settings = {
    command: 'reported',
    args: [],
    endSignal: undefined,
    log: new QuietLogger(),
    launch: (_request: unknown, given: ChildEvents): ChildLike => ((events = given), child),
    ended: () => {
      done = true;
      endedNow();
    },
  };
  const session = new Session(socket, settings, 'peer', {});
  session.start();
  events!.spawned();
  return { session, child, events: events!, received: readAll(peer, 30_000).then(String), ended, isEnded: () => done };
}

t.test('a child that exited with its output delivered and never reports closed: its session ends', async (t) => {
  t.test('at shutdown, within the shutdown linger', async (t) => {
    const { session, child, events, received, ended, isEnded } = await running(t);
    child.stdout.end('all of it\n');
    events.exited(0, null);
    t.equal(await received, 'all of it\n', 'the peer got the output and our end');
    t.notOk(isEnded(), 'the session waits for the peer to close');
    session.end();
    await withDeadline(ended, 5_000, 'the session ends');
    t.pass('the session ended');
  });

  t.test('without a shutdown, once the peer has had its ten seconds', async (t) => {
    const { child, events, received, ended, isEnded } = await running(t);
    events.exited(0, null);
    child.stdout.end('all of it\n');
    t.equal(await received, 'all of it\n', 'the peer got the output and our end');
    await sleep(2_000);
    t.notOk(isEnded(), 'the peer has a while to close its side');
    await withDeadline(ended, 15_000, 'the session ends');
    t.pass('the session ended');
  });
});

t.test('at shutdown, an exited child whose output is still on its way: none of it is cut short', async (t) => {
  const { session, child, events, received, ended } = await running(t);
  events.exited(0, null);
  session.end();
  // Later than the shutdown linger of a session whose output is flushed: this one's is not.
  await sleep(1_500);
  child.stdout.end('late output\n');
  t.equal(await received, 'late output\n', 'it reaches the peer');
  await withDeadline(ended, 5_000, 'the session ends');
  t.pass('the session ended');
});
