import type { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { reason } from '../log/reason.js';
import type { AliasBook } from './alias-book.js';
import { fingerprint } from '../peer/fingerprint.js';

/** Who may become a peer, beyond completing a handshake. */
export interface TrustPolicy {
  /** Without -n a peer must present a certificate. */
  requireCert: boolean;
  /** --ca: the certificate must chain to the CA bundle (dates included). */
  verifyChain: boolean;
  /** --aliases: only listed fingerprints are served. */
  aliases: AliasBook | undefined;
}

/** What this one connection must show, when we dialed it. */
export interface Expectation {
  /** A fingerprint from the dial line. */
  pin?: string;
  /** The host name (in its one form) or address we dialed, checked against the certificate in CA mode. */
  host?: string;
}

export interface PeerIdentity {
  certificate?: X509Certificate;
  sha256?: string;
  alias?: string;
}

export type Verdict = { accepted: PeerIdentity } | { refused: string };

/** Decides, right after the handshake and before any child starts, whether this peer is served. */
export function checkPeer(socket: TLSSocket, policy: TrustPolicy, expectation: Expectation = {}): Verdict {
  const certificate = socket.getPeerX509Certificate();
  if (!certificate) return policy.requireCert ? { refused: 'Peer certificate is required' } : { accepted: {} };
  const sha256 = fingerprint(certificate.raw);
  if (policy.verifyChain) {
    // Node also fails `authorized` on a name mismatch when dialing; that case gets its own words.
    const error = socket.authorizationError;
    const code = error instanceof Error ? (error as NodeJS.ErrnoException).code : error;
    const nameOnly = code === 'ERR_TLS_CERT_ALTNAME_INVALID';
    if (!socket.authorized && !nameOnly) return { refused: `certificate not trusted by the CA: ${verifyError(error)}` };
    if (expectation.host !== undefined && !validFor(certificate, expectation.host)) {
      return { refused: `certificate not valid for ${expectation.host}` };
    }
  }
  if (expectation.pin !== undefined && expectation.pin !== sha256) {
    return { refused: `fingerprint mismatch: expected ${expectation.pin}, got ${sha256}` };
  }
  if (!policy.aliases) return { accepted: { certificate, sha256 } };
  const alias = policy.aliases.lookup(sha256);
  if (alias === undefined) return { refused: `peer SHA256 ${sha256} is not in ${policy.aliases.file}` };
  return { accepted: { certificate, sha256, alias } };
}

/** RFC 6125 name (or address) match, as a browser would check the server it dialed. */
function validFor(certificate: X509Certificate, host: string): boolean {
  return (isIP(host) === 0 ? certificate.checkHost(host) : certificate.checkIP(host)) !== undefined;
}

/** OpenSSL's verify code (`CERT_HAS_EXPIRED`) as words, code kept for searching. */
function verifyError(error: Error | string | undefined): string {
  if (error === undefined) return 'not verified';
  if (error instanceof Error) return reason(error);
  return `${error.toLowerCase().replace(/_/g, ' ')} (${error})`;
}
