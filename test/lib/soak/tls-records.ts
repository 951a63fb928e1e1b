import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';

/**
 * ClientHellos built by hand, so that a check does not depend on what the local TLS library is
 * willing to send: legacy versions, or compression offered.
 */
export interface HelloOptions {
  /** client_version: 0x0300 SSLv3, 0x0301 TLS 1.0, 0x0302 TLS 1.1, 0x0303 TLS 1.2. */
  version: number;
  /** Compression methods offered, in order (0 = null, 1 = DEFLATE). */
  compression?: number[];
  /** The server_name extension's host name, byte for byte, whatever TLS libraries would refuse to send. */
  serverName?: Buffer;
}

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 255]);
const vector16 = (body: Buffer): Buffer => Buffer.concat([u16(body.length), body]);
const extension = (type: number, body: Buffer): Buffer => Buffer.concat([u16(type), vector16(body)]);

export function clientHello({ version, compression = [0], serverName }: HelloOptions): Buffer {
  // ECDHE-ECDSA and ECDHE-RSA with AES-GCM and AES-CBC, then plain RSA: enough for any version.
  const suites = [0xc02b, 0xc02f, 0xc02c, 0xc030, 0xc009, 0xc013, 0xc00a, 0xc014, 0x002f, 0x0035, 0x000a];
  const extensions = [
    ...(serverName ? [extension(0x0000, vector16(Buffer.concat([Buffer.from([0]), vector16(serverName)])))] : []), // server_name: one host_name (type 0)
    extension(0x000a, vector16(Buffer.concat([u16(0x0017), u16(0x0018)]))), // supported_groups: P-256, P-384
    extension(0x000b, Buffer.from([1, 0])), // ec_point_formats: uncompressed
    ...(version >= 0x0303 ? [extension(0x000d, vector16(Buffer.concat([0x0403, 0x0503, 0x0804, 0x0401].map(u16))))] : []), // signature_algorithms
    extension(0xff01, Buffer.from([0])), // renegotiation_info, empty
  ];
  const body = Buffer.concat([
    u16(version),
    randomBytes(32),
    Buffer.from([0]), // no session id
    vector16(Buffer.concat(suites.map(u16))),
    Buffer.from([compression.length, ...compression]),
    vector16(Buffer.concat(extensions)),
  ]);
  const handshake = Buffer.concat([Buffer.from([1, body.length >> 16, (body.length >> 8) & 255, body.length & 255]), body]);
  return Buffer.concat([Buffer.from([0x16, 0x03, Math.min(version, 0x0301) & 255]), u16(handshake.length), handshake]);
}

export type ServerAnswer =
  | { kind: 'alert'; level: number; description: number }
  | { kind: 'serverHello'; version: number; compression: number }
  | { kind: 'closed' }
  | { kind: 'other'; bytes: string };

/** Sends one ClientHello and reads the server's first record: an alert, a ServerHello, or nothing. */
export function firstAnswer(port: number, hello: Buffer, ms = 5_000): Promise<ServerAnswer> {
  return new Promise((resolve) => {
    const socket = netConnect({ host: '127.0.0.1', port });
    let received = Buffer.alloc(0);
    const done = (answer: ServerAnswer): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done({ kind: 'other', bytes: `nothing within ${ms} ms` }), ms);
    socket.on('error', () => {});
    socket.on('connect', () => socket.write(hello));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 5) return;
      const [type] = received;
      const length = received.readUInt16BE(3);
      if (received.length < 5 + length) return;
      const record = received.subarray(5, 5 + length);
      if (type === 0x15) done({ kind: 'alert', level: record[0]!, description: record[1]! });
      else if (type === 0x16 && record[0] === 2) {
        // ServerHello: type(1) length(3) version(2) random(32) session_id<1> suite(2) compression(1)
        const idLength = record[38]!;
        done({ kind: 'serverHello', version: record.readUInt16BE(4), compression: record[39 + idLength + 2]! });
      } else done({ kind: 'other', bytes: record.subarray(0, 16).toString('hex') });
    });
    socket.on('close', () => done({ kind: 'closed' }));
  });
}

export const ALERT_PROTOCOL_VERSION = 70;
