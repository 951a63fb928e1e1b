import type { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { quoteBytes } from '../log/logger.js';
import { reason } from '../log/reason.js';
import type { Side } from './side.js';
import { certificateSubject } from '../peer/distinguished-name.js';
import { canonicalHostName } from '../input/host-name.js';

/**
 * The names a peer chooses that reach its child: the server name of the handshake (SNI) and its
 * certificate's subject. A remote peer picks both freely, with or without a certificate anyone
 * trusts; children log them, compare them, name directories after them. So each is given in one
 * documented form (docs/manual.md, section 3.2) or not at all, with a log line saying why.
 */
export interface PeerNames {
  /** SSL_TLS_SNI_SERVERNAME: a host name, lowercased, without the trailing dot. */
  serverName: string | undefined;
  /** SSL_PEER_CERT_SUBJECT: RFC 4514 form, escaped. */
  subject: string | undefined;
}

export interface NameSources {
  side: Side;
  /** The host we dialed: a host name in its one form (the SNI we sent) or an address. */
  dialed: string | undefined;
  certificate: X509Certificate | undefined;
  /** Logs why a name is left out, once per connection at most per name. */
  note: (problem: string) => void;
}

export function peerNames(socket: TLSSocket, sources: NameSources): PeerNames {
  return { serverName: serverName(socket, sources), subject: subject(sources) };
}

function serverName(socket: TLSSocket, { side, dialed, note }: NameSources): string | undefined {
  if (side === 'CLIENT') return dialed !== undefined && isIP(dialed) === 0 ? dialed : undefined;
  // The tls typings leave `servername` out of TLSSocket. Node hands it over one character per byte
  // (Latin-1), so it holds the bytes the client sent; OpenSSL has refused any with a NUL.
  const sent = (socket as TLSSocket & { servername?: string | false }).servername;
  if (typeof sent !== 'string' || sent === '') return undefined;
  const name = canonicalHostName(sent);
  if (name === undefined) note(`the server name the client sent, ${quoteBytes(Buffer.from(sent, 'latin1'))}, is not a host name: SSL_TLS_SNI_SERVERNAME left unset`);
  return name;
}

/**
 * Far above any real subject (RFC 5280 bounds each attribute to 64 to 255 characters), far below
 * the 128 KiB execve takes in one variable: a peer with a huge subject would otherwise have its
 * child fail to start (E2BIG), logged as if the command were at fault.
 */
const MAX_SUBJECT_BYTES = 8192;

function subject({ certificate, note }: NameSources): string | undefined {
  if (!certificate) return undefined;
  let text: string;
  try {
    text = certificateSubject(certificate.raw);
  } catch (error) {
    note(`cannot read the subject of the peer's certificate (${reason(error)}): SSL_PEER_CERT_SUBJECT left unset`);
    return undefined;
  }
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_SUBJECT_BYTES) {
    note(`the subject of the peer's certificate is ${bytes} bytes long, more than ${MAX_SUBJECT_BYTES}: SSL_PEER_CERT_SUBJECT left unset`);
    return undefined;
  }
  // An empty subject is no name: absent, like any value the connection does not give.
  return text || undefined;
}
