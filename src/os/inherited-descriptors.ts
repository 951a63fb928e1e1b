import { closeSync, readdirSync, readFileSync } from 'node:fs';
import tls from 'node:tls';

const O_CLOEXEC = 0o2000000;

/**
 * Descriptors above 2 that this process would pass on to whatever it executes: those open without
 * close-on-exec. Node and libuv open everything with close-on-exec, so on Linux these are the ones
 * the process inherited from its parent (a shell's `exec 3<file`, a service manager's sockets).
 * Empty where /proc/self/fdinfo does not exist.
 */
export function inheritableDescriptors(): number[] {
  let names: string[];
  try {
    names = readdirSync('/proc/self/fd');
  } catch {
    return [];
  }
  const found: number[] = [];
  for (const name of names) {
    const fd = Number(name);
    if (fd <= 2) continue;
    let info: string;
    try {
      info = readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1');
    } catch {
      continue; // the directory's own descriptor, closed once listed
    }
    const flags = /^flags:\s*([0-7]+)$/m.exec(info)?.[1];
    if (flags !== undefined && (parseInt(flags, 8) & O_CLOEXEC) === 0) found.push(fd);
  }
  return found.sort((a, b) => a - b);
}

/**
 * Closes every descriptor this process inherited beyond stdin, stdout, stderr and `keep` (socket
 * activation's): a child must never hold what tlsd's parent happened to leave open (a root-only
 * file, another service's socket), and Node's spawn would pass each of them on. Returns those closed.
 */
export function closeInheritedDescriptors(keep: readonly number[]): number[] {
  settleCertificateLoading();
  const channel = (process.channel as { fd?: unknown } | undefined)?.fd; // tlsd run by a Node parent with IPC
  const closed = inheritableDescriptors().filter((fd) => !keep.includes(fd) && fd !== channel);
  for (const fd of closed) {
    try {
      closeSync(fd);
    } catch {
      // already gone: nothing to pass on
    }
  }
  return closed;
}

/**
 * Waits for Node's own reading of NODE_EXTRA_CA_CERTS. Node 22 and 24 read that file on a thread of
 * their own once `tls` is loaded, through a descriptor without close-on-exec: met by the scan, it
 * would pass for an inherited one, be closed in the middle of the read (the certificates lost, with
 * a warning), and its number, reused by tlsd in the meantime, be closed again by that thread. Asking
 * for those certificates joins the thread. Node 20 reads the file before any script runs and has
 * no getCACertificates.
 */
function settleCertificateLoading(): void {
  (tls as { getCACertificates?: (type: 'extra') => string[] }).getCACertificates?.('extra');
}
