import { X509Certificate, constants as cryptoConstants, createPrivateKey } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import { reason } from '../log/reason.js';
import { fingerprint } from '../peer/fingerprint.js';
import { readAdvice } from './read-access.js';

/** Our own key and certificate, ready for both sides of a connection. */
export interface Identity {
  /** For dialing: the context every outgoing connection presents. */
  context: SecureContext;
  /** For the listener: the same material as options, since tls.Server builds its own context. */
  options: SecureContextOptions;
  /** Our certificate's fingerprint, as peers see it in SHA256. */
  fingerprint: string;
  /** Set when the key file is readable by anyone: worth a warning each time it is loaded. */
  exposure?: string;
  /** What it was made from: a worker process is given this, never the key file. */
  pem: { key: Buffer; cert: Buffer; ca?: Buffer };
}

export class IdentityError extends Error {}

/**
 * TLS 1.2 is the floor; renegotiation is refused (it is a DoS vector and nothing here needs it).
 * No stateless tickets: they cost the server about a sixth of its CPU per connection (OpenSSL 3.0
 * encodes the session and decodes it again, peer certificate included, for each ticket) for
 * clients that do not resume. TLS 1.3 still sends stateful tickets, bare session ids, and Node's
 * server keeps no session cache, so nothing can be resumed and each connection's certificate is
 * checked afresh; a 'resumeSession' listener on the server would change that.
 * Shared by every context so that a reload cannot quietly drop one of these settings.
 */
function contextOptions(key: Buffer, cert: Buffer, ca: Buffer | undefined): SecureContextOptions {
  return {
    key,
    cert,
    // Only with --ca: then peers are verified against it instead of the system's roots.
    ...(ca ? { ca } : {}),
    minVersion: 'TLSv1.2',
    secureOptions: cryptoConstants.SSL_OP_NO_RENEGOTIATION | cryptoConstants.SSL_OP_NO_TICKET,
  };
}

export interface IdentityFiles {
  keyFile: string;
  certFile: string;
  /** --ca: the bundle peers' certificates must chain to. */
  caFile?: string;
}

/** Reads and checks key and certificate (and CA bundle); any problem is one IdentityError naming the file. */
export async function loadIdentity({ keyFile, certFile, caFile }: IdentityFiles): Promise<Identity> {
  // One after another, so that when several files are unreadable the error names the same one
  // every time.
  const key = await readCredential(keyFile, 'key');
  const cert = await readCredential(certFile, 'certificate');
  const ca = caFile === undefined ? undefined : await readCredential(caFile, 'CA');
  if (ca && caFile) checkBundle(ca, caFile);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (error) {
    throw new IdentityError(`Cannot use certificate file ${certFile}: ${reason(error)}`);
  }
  const options = contextOptions(key, cert, ca);
  let context: SecureContext;
  try {
    context = createSecureContext(options);
  } catch (error) {
    // By OpenSSL's reason code, which Node names after it: the message's words are OpenSSL's to change.
    if ((error as NodeJS.ErrnoException).code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH') {
      throw new IdentityError(mismatch(keyFile, certFile));
    }
    throw new IdentityError(`Cannot use key file ${keyFile} with certificate file ${certFile}: ${reason(error)}`);
  }
  // OpenSSL compares key and certificate only when they are of one type: an RSA key with an EC
  // certificate makes a context every handshake then fails with.
  if (!leaf.checkPrivateKey(createPrivateKey(key))) throw new IdentityError(mismatch(keyFile, certFile));
  return { context, options, fingerprint: fingerprint(leaf.raw), exposure: await exposure(keyFile), pem: { key, cert, ca } };
}

/** An identity from material loadIdentity has already checked (in the primary, for a worker). */
export function identityFromPem(key: Buffer, cert: Buffer, ca: Buffer | undefined): Identity {
  const options = contextOptions(key, cert, ca);
  return { context: createSecureContext(options), options, fingerprint: fingerprint(new X509Certificate(cert).raw), pem: { key, cert, ca } };
}

function mismatch(keyFile: string, certFile: string): string {
  return `Key file ${keyFile} does not match certificate file ${certFile}`;
}

// Group-readable is a deliberate choice (an ssl-cert group); readable by everyone never is.
async function exposure(keyFile: string): Promise<string | undefined> {
  const mode = (await stat(keyFile)).mode & 0o777;
  if ((mode & 0o004) === 0) return undefined;
  return `Key file ${keyFile} is readable by everyone (mode ${mode.toString(8).padStart(4, '0')}): chmod o-rwx it`;
}

async function readCredential(file: string, what: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    const denied = (error as NodeJS.ErrnoException).code === 'EACCES' ? readAdvice(file) : undefined;
    if (denied) throw new IdentityError(`Cannot read ${what} file ${file} as user ${denied.user} (EACCES): ${denied.advice}`);
    throw new IdentityError(`Cannot read ${what} file ${file}: ${reason(error)}`);
  }
}

/**
 * One warning per credential file this process cannot read now: after --user dropped root, the
 * next reload would fail on it, and the start is the time to say so, not the first renewal.
 */
export function reloadWarnings({ keyFile, certFile, caFile }: IdentityFiles): string[] {
  const files: Array<[string, string | undefined]> = [['Key', keyFile], ['Certificate', certFile], ['CA', caFile]];
  return files.flatMap(([what, file]) => {
    const denied = file === undefined ? undefined : readAdvice(file);
    return denied ? [`${what} file ${file} is not readable by user ${denied.user}, so a reload (SIGHUP) will fail: ${denied.advice}`] : [];
  });
}

// OpenSSL skips what is not a certificate in a bundle; an empty or garbled one would trust nobody.
function checkBundle(ca: Buffer, caFile: string): void {
  if (!/-----BEGIN CERTIFICATE-----/.test(ca.toString('latin1'))) {
    throw new IdentityError(`Cannot use CA file ${caFile}: no PEM certificate in it`);
  }
  try {
    createSecureContext({ ca });
  } catch (error) {
    throw new IdentityError(`Cannot use CA file ${caFile}: ${reason(error)}`);
  }
}
