import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestIdentity {
  key: string;
  cert: string;
  /** Computed as the manual says, `openssl x509 -outform DER | sha256sum`, not with tlsd's code. */
  fingerprint: string;
}

/** A fresh temporary directory, removed by nobody: the OS cleans /tmp, and tests stay debuggable. */
export function tempDir(prefix = 'tlsd-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A self-signed EC P-256 identity made by openssl, as users make theirs. */
export function makeIdentity(dir: string, name: string): TestIdentity {
  const key = join(dir, `${name}-key.pem`);
  const cert = join(dir, `${name}-cert.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '30', '-subj', `/CN=${name}`], { stdio: 'ignore' });
  return { key, cert, fingerprint: opensslFingerprint(cert) };
}

export function opensslFingerprint(certFile: string): string {
  const der = execFileSync('openssl', ['x509', '-in', certFile, '-outform', 'DER']);
  return createHash('sha256').update(der).digest('hex');
}

/** Key and certificate files in `dir` that a test replaces, as a renewal does, before a SIGHUP. */
export interface LiveIdentity {
  key: string;
  cert: string;
  /** Copies `identity`'s key and certificate over the live files. */
  install(identity: TestIdentity): void;
}

export function liveIdentity(dir: string): LiveIdentity {
  const key = join(dir, 'live-key.pem');
  const cert = join(dir, 'live-cert.pem');
  return {
    key,
    cert,
    install(identity) {
      copyFileSync(identity.key, key);
      copyFileSync(identity.cert, cert);
    },
  };
}
