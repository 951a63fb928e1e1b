import { closeSync, constants, openSync, readFileSync } from 'node:fs';

/** Linux's O_PATH on every architecture Node runs on (asm-generic); Node's fs.constants lacks it. */
const O_PATH = 0o10000000;

/**
 * A descriptor that holds what `path` names (a link itself, not where it points) without opening
 * it, or undefined if nothing is there. An O_PATH descriptor is no end of a pipe: readers and
 * writers of a FIFO never see it. What it gives is the file kept: while it is held, its inode
 * number is nobody else's, and fstat of it says what std2fifo holds, not what a name leads to by
 * then. `shown` names the file in an error.
 */
export function holdFile(path: string, shown: string): number | undefined {
  let fd: number;
  try {
    fd = openSync(path, O_PATH | constants.O_NOFOLLOW);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  if (!isPathOnly(fd)) {
    closeSync(fd);
    throw new Error(`cannot hold ${shown}: open(2) here does not take O_PATH as ${O_PATH.toString(8)}`);
  }
  return fd;
}

/** Whether the kernel took `fd` as O_PATH (it says so in fdinfo): never a reader or writer by mistake. */
function isPathOnly(fd: number): boolean {
  const flags = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'))?.[1];
  return flags !== undefined && (parseInt(flags, 8) & O_PATH) !== 0;
}
