import { access, mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { keygen } from '../keygen/keygen.js';
import { makeParents } from '../keygen/write-files.js';
import type { IdentityFiles } from '../core/identity.js';
import { reason } from '../log/reason.js';

/** The key and certificate; a CA bundle is never a default. */
type KeyAndCertificate = Pick<IdentityFiles, 'keyFile' | 'certFile'>;

/**
 * The original's defaults: a system-wide identity managed by the administrator, `key.pem` and
 * `cert.pem` in /etc/tls, or in the directory TLSD_SYSTEM_DIR names (for packagers whose system
 * configuration lives elsewhere, and for tests, which must not depend on what /etc/tls holds).
 * It comes from whoever starts tlsd, as -k and -c do, so it opens nothing to anyone else.
 */
export function systemIdentity(env: NodeJS.ProcessEnv): KeyAndCertificate {
  const dir = env.TLSD_SYSTEM_DIR || '/etc/tls';
  return { keyFile: join(dir, 'key.pem'), certFile: join(dir, 'cert.pem') };
}

/** `$XDG_CONFIG_HOME/tlsd` (a relative value is ignored, as the XDG spec says), else `~/.config/tlsd`. */
export function userIdentityDir(env: NodeJS.ProcessEnv): string {
  const config = env.XDG_CONFIG_HOME;
  return join(config && isAbsolute(config) ? config : join(env.HOME || homedir(), '.config'), 'tlsd');
}

export interface ChosenIdentity extends KeyAndCertificate {
  /** Set when the files were made just now. */
  created: boolean;
}

/**
 * Which key and certificate to use. Paths given on the command line are used as given (the other
 * one defaults to the system directory). With none given, the system directory's are used when it
 * holds either file; otherwise a per-user identity, made on first use, so tlsd works on a fresh
 * machine with no set-up.
 */
export async function chooseIdentity(given: Partial<KeyAndCertificate>, env: NodeJS.ProcessEnv): Promise<ChosenIdentity> {
  const system = systemIdentity(env);
  if (given.keyFile !== undefined || given.certFile !== undefined) {
    return { keyFile: given.keyFile ?? system.keyFile, certFile: given.certFile ?? system.certFile, created: false };
  }
  // One file without the other there is a broken set-up: loading it gives the clear error.
  if ((await exists(system.keyFile)) || (await exists(system.certFile))) return { ...system, created: false };

  const dir = userIdentityDir(env);
  const files = { keyFile: join(dir, 'key.pem'), certFile: join(dir, 'cert.pem') };
  if ((await exists(files.keyFile)) || (await exists(files.certFile))) return { ...files, created: false };
  try {
    await makePrivateDir(dir);
    await keygen({ key: { type: 'ec' }, subject: [{ key: 'CN', value: 'tlsd' }], days: 3650, ...files, force: false });
  } catch (error) {
    // Another tlsd starting at the same moment may have made them: theirs serve as well as ours.
    if ((await exists(files.keyFile)) && (await exists(files.certFile))) return { ...files, created: false };
    throw new Error(`Cannot create an identity in ${dir}: ${reason(error)}`);
  }
  return { ...files, created: true };
}

async function makePrivateDir(dir: string): Promise<void> {
  await makeParents(dir);
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
