import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fingerprint } from '../peer/fingerprint.js';
import { reason } from '../log/reason.js';
import { selfSignedCertificate } from './certificate.js';
import { generateKeys, type KeySpec } from './keys.js';
import type { SubjectAttribute } from './subject.js';
import { ExistsError, firstExisting, WriteError, writeAll } from './write-files.js';

/** Every failure a user can cause: its message is the whole story, one line, no stack. */
export class KeygenError extends Error {}

export interface KeygenOptions {
  key: KeySpec;
  subject: SubjectAttribute[];
  /** Validity from now, in days. */
  days: number;
  keyFile: string;
  certFile: string;
  /** Replace existing files instead of refusing. */
  force: boolean;
}

export interface KeygenResult {
  /** As tlsd shows it and sets SHA256: lowercase hex SHA-256 of the certificate's DER. */
  fingerprint: string;
  notAfter: Date;
}

const day = 24 * 60 * 60 * 1000;

/** Makes a key and a self-signed certificate for it and writes both, or neither. */
export async function keygen(options: KeygenOptions): Promise<KeygenResult> {
  const { keyFile, certFile } = options;
  if (resolve(keyFile) === resolve(certFile)) throw new KeygenError(`the key and the certificate cannot both be ${keyFile}`);
  if (!options.force) {
    const existing = await firstExisting([keyFile, certFile]).catch((error: unknown) => {
      throw new KeygenError(`Cannot check ${keyFile} and ${certFile}: ${reason(error)}`);
    });
    if (existing !== undefined) throw refusal(existing);
  }

  const keys = await generateKeys(options.key);
  // Whole seconds: X.509 times have no fractions, and the end date is then exactly `days` later.
  const notBefore = new Date(Math.floor(Date.now() / 1000) * 1000);
  const notAfter = new Date(notBefore.getTime() + options.days * day);
  const der = selfSignedCertificate({ keys, type: options.key.type, subject: options.subject, notBefore, notAfter });
  // Read back the way tlsd reads it, so a certificate tlsd could not use is never written.
  const cert = new X509Certificate(der);

  try {
    await writeAll(
      [
        { path: keyFile, contents: keys.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, mode: 0o600 },
        { path: certFile, contents: cert.toString(), mode: 0o644 },
      ],
      options.force,
    );
  } catch (error) {
    if (error instanceof ExistsError) throw refusal(error.path);
    if (error instanceof WriteError) throw new KeygenError(`Cannot write ${error.path}: ${reason(error.cause)}; nothing written${permissionHint(error.cause)}`);
    throw error;
  }
  return { fingerprint: fingerprint(cert.raw), notAfter };
}

// Likely the default /etc/tls as an ordinary user: say how to write elsewhere.
function permissionHint(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'EACCES' || code === 'EPERM' || code === 'EROFS' ? ' (choose other files with -k and -c)' : '';
}

function refusal(path: string): KeygenError {
  return new KeygenError(`${path} exists already; nothing written (use --force to replace it)`);
}

/** The fingerprint of the first certificate in a PEM (or DER) file, as tlsd would show it. */
export async function certificateFingerprint(file: string): Promise<string> {
  let contents: Buffer;
  try {
    contents = await readFile(file);
  } catch (error) {
    throw new KeygenError(`Cannot read certificate file ${file}: ${reason(error)}`);
  }
  try {
    return fingerprint(new X509Certificate(contents).raw);
  } catch (error) {
    throw new KeygenError(`Cannot use certificate file ${file}: ${reason(error)}`);
  }
}
