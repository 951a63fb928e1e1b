import { randomBytes, X509Certificate } from 'node:crypto';
import { connect, type ConnectionOptions } from 'node:tls';
import { buildName, oid } from './named-identity.js';
import { signedCertificate } from '../../src/keygen/certificate.js';
import { generateKeys } from '../../src/keygen/keys.js';

/** A peer's identity, in memory: many of them are made at once. */
export interface PeerIdentity {
  key: Buffer;
  cert: Buffer;
  /** From Node's X509Certificate, not from tlsd's code. */
  fingerprint: string;
}

/** A self-signed EC identity, made in-process (a few milliseconds: hundreds of peers need one each). */
export async function peerIdentity(name: string): Promise<PeerIdentity> {
  const keys = await generateKeys({ type: 'ec' });
  const now = Date.now();
  const der = signedCertificate({ keys, type: 'ec', name: buildName([[{ type: oid.CN, value: { utf8String: name } }]]), notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000) });
  const cert = Buffer.from(`-----BEGIN CERTIFICATE-----\n${der.toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END CERTIFICATE-----\n`);
  const fingerprint = new X509Certificate(cert).fingerprint256.replaceAll(':', '').toLowerCase();
  return { key: Buffer.from(keys.privateKey.export({ type: 'pkcs8', format: 'pem' })), cert, fingerprint };
}

/** How one peer's visit ended. */
export type Outcome =
  /** Its header line, then every byte it sent, back. */
  | 'served'
  /** Closed (FIN or reset) before the header line: turned away, and it knows. */
  | 'refused'
  /** Still open at the deadline. */
  | 'hung'
  /** A header line, then not the bytes it sent: lost or changed. */
  | 'lost';

export interface Visit {
  outcome: Outcome;
  /** The header line the service wrote, split at spaces. */
  header: string[];
  /** Payload bytes that came back intact (its size when served). */
  checked: number;
  /** The client's own port, as the balancer saw it. */
  localPort: number | undefined;
  /** Why, for a failure message. */
  detail: string;
}

export interface VisitOptions {
  host: string;
  port: number;
  /** The loopback address the peer connects from. */
  from: string;
  identity: PeerIdentity;
  payload?: Buffer;
  /** The fingerprint the server must show (a pinned identity). */
  serverFingerprint?: string;
  /** Extra TLS options (a CA to verify against, a server name). */
  tls?: ConnectionOptions;
  ms?: number;
}

/**
 * One peer of an echo service that first writes a line about itself (examples/cluster's
 * service.sh): connects, sends its payload, ends its side, and reads everything until the end.
 */
export function visit(options: VisitOptions): Promise<Visit> {
  const payload = options.payload ?? randomBytes(8192);
  const ms = options.ms ?? 20_000;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let localPort: number | undefined;
    let error = '';
    const socket = connect({
      host: options.host,
      port: options.port,
      localAddress: options.from,
      key: options.identity.key,
      cert: options.identity.cert,
      rejectUnauthorized: false,
      ...options.tls,
    } as ConnectionOptions);
    const timer = setTimeout(() => finish('hung', `still open after ${ms} ms`), ms);
    const finish = (forced: Outcome | undefined, why = ''): void => {
      clearTimeout(timer);
      socket.destroy();
      const received = Buffer.concat(chunks);
      const newline = received.indexOf(0x0a);
      const header = newline < 0 ? [] : received.subarray(0, newline).toString().split(' ');
      const echo = newline < 0 ? Buffer.alloc(0) : received.subarray(newline + 1);
      const outcome: Outcome = forced ?? (newline < 0 ? 'refused' : echo.equals(payload) ? 'served' : 'lost');
      const checked = outcome === 'served' ? payload.length : 0;
      resolve({ outcome, header, checked, localPort, detail: `${why}${error ? ` (${error})` : ''}: ${received.length} bytes received, ${echo.length} of ${payload.length} echoed` });
    };
    socket.once('connect', () => (localPort = socket.localPort));
    socket.once('secureConnect', () => {
      const shown = socket.getPeerX509Certificate()?.fingerprint256.replaceAll(':', '').toLowerCase();
      if (options.serverFingerprint !== undefined && shown !== options.serverFingerprint) {
        finish('lost', `the server showed ${shown}, not ${options.serverFingerprint}`);
        return;
      }
      socket.end(payload);
    });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', (e: Error) => (error = e.message));
    socket.once('end', () => finish(undefined, 'ended'));
    socket.once('close', () => finish(undefined, 'closed'));
  });
}

/** Peers served, refused, hung and lost, and the payload bytes checked. */
export interface Tally {
  served: number;
  refused: number;
  hung: number;
  lost: number;
  checked: number;
  /** Peers served, by the host their header names. */
  byHost: Record<string, number>;
  failures: string[];
}

export function tally(visits: readonly Visit[]): Tally {
  const result: Tally = { served: 0, refused: 0, hung: 0, lost: 0, checked: 0, byHost: {}, failures: [] };
  for (const v of visits) {
    result[v.outcome]++;
    result.checked += v.checked;
    if (v.outcome === 'served') result.byHost[v.header[0]!] = (result.byHost[v.header[0]!] ?? 0) + 1;
    if (v.outcome === 'hung' || v.outcome === 'lost') result.failures.push(`${v.outcome}: ${v.header.join(' ')} ${v.detail}`);
  }
  return result;
}
