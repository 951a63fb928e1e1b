import { readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:tls';
import t, { type Test } from 'tap';
import { tempDir } from './lib/identity.js';
import { cast, quietSyslog } from './lib/limits-faults.js';
import { startTlsd } from './lib/tlsd.js';

// A peer that sends close_notify and FIN right after its handshake, before its session has begun:
// with -d the certificate is written first, with --workers the primary grants the peer slot first.
// Its 'end' came while nothing listened; the child must still get EOF and the peer its output.

const { server, alice } = cast(t);

/** Connects, ends at once without a byte, and resolves with everything received before the end. */
function endAtOnce(port: number, ms = 8_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, key: readFileSync(alice.key), cert: readFileSync(alice.cert), rejectUnauthorized: false });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no end within ${ms} ms`));
    }, ms);
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('end', () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.on('error', reject);
    socket.once('secureConnect', () => socket.end());
  });
}

function ownDir(t: Test): string {
  const dir = tempDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const [name, options] of [
  ['-d (the certificate is saved before the session)', (t: Test) => ['-d', ownDir(t)]],
  ['--workers 2 (the primary grants the slot before the session)', () => ['--workers', '2']],
] as const) {
  t.test(`a peer that ends right after its handshake, ${name}: its child gets EOF, the peer its output`, async (t) => {
    const tlsd = await startTlsd(t, { identity: server, command: ['sh', '-c', 'echo hello; cat; echo bye'], env: quietSyslog, options: options(t) });
    for (let i = 0; i < 6; i++) t.equal(await endAtOnce(tlsd.port), 'hello\nbye\n', `connection ${i + 1}: the child saw EOF and said goodbye`);
  });
}
