/**
 * Reference servers in plain Node, to show what Node itself costs next to tlsd: the same TLS
 * settings as tlsd (client certificate requested, none verified against a CA, no session tickets).
 *   spawn: a child per connection with child_process.spawn, the twenty lines one would write first;
 *   echo:  no child at all, the echo (or the file) served in-process: the floor of Node's TLS.
 * Usage: node bench/out/node-tls-server.js MODE PORT KEY CERT [FILE]
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { createServer } from 'node:tls';

const [mode, port, key, cert, file] = process.argv.slice(2);
if ((mode !== 'spawn' && mode !== 'echo') || !port || !key || !cert) {
  console.error('usage: node-tls-server.js spawn|echo PORT KEY CERT [FILE]');
  process.exit(2);
}

const server = createServer(
  {
    key: readFileSync(key),
    cert: readFileSync(cert),
    requestCert: true,
    rejectUnauthorized: false,
    secureOptions: constants.SSL_OP_NO_TICKET,
    // As tlsd: the peer's end of input ends the child's stdin, and the reply still goes out after it.
    allowHalfOpen: true,
    noDelay: true,
  },
  (socket) => {
    socket.on('error', () => socket.destroy());
    // Who the peer is, as any super-server here must know.
    if (!socket.getPeerX509Certificate()?.fingerprint256) return void socket.destroy();
    if (mode === 'echo') {
      if (file) createReadStream(file).pipe(socket);
      else socket.pipe(socket);
      return;
    }
    const child = spawn('cat', file ? [file] : [], { stdio: ['pipe', 'pipe', 'ignore'] });
    child.stdin.on('error', () => undefined);
    socket.pipe(child.stdin);
    child.stdout.pipe(socket);
    socket.on('close', () => child.kill());
  },
);
server.listen(Number(port), '127.0.0.1');
