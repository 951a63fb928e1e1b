import { readFileSync } from 'node:fs';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { TestIdentity } from './identity.js';

/** Node's TLS client with a client certificate (or none), connected and handshaken. */
export function connectTls(port: number, identity?: TestIdentity, extra: ConnectionOptions & { localAddress?: string } = {}): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const options: ConnectionOptions & { allowHalfOpen: boolean } = {
      host: '127.0.0.1',
      port,
      rejectUnauthorized: false,
      allowHalfOpen: true,
      ...(identity ? { key: readFileSync(identity.key), cert: readFileSync(identity.cert) } : {}),
      ...extra,
    };
    const socket = connect(options, () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Reads until the server ends its side; resolves with everything received. */
export function readAll(socket: TLSSocket, ms = 20_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => reject(new Error(`no end within ${ms} ms; got ${Buffer.concat(chunks).length} bytes`)), ms);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** Sends `input`, half-closes, and resolves with the whole reply. */
export async function exchange(port: number, identity: TestIdentity | undefined, input: string | Buffer): Promise<string> {
  const socket = await connectTls(port, identity);
  const reply = readAll(socket);
  socket.end(input);
  return (await reply).toString();
}
