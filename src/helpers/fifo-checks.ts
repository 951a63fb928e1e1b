import type { Stats } from 'node:fs';

/*
 * What std2fifo accepts as a peer's directory and FIFOs. The directory is shared with a group
 * (std2fifo(1)), and anyone who can write in it can put something else under the names `in` and
 * `out` between two of std2fifo's opens: a symbolic link to a file, a tty or a FIFO elsewhere, a
 * file or a FIFO of their own, a second name for another peer's FIFO. So every open checks what
 * it got, and only a FIFO that std2fifo's user owns, that has no other name and that others
 * cannot open carries a peer's data.
 */

/** A refusal: the path and why, as one line for the log. */
export class Refused extends Error {
  constructor(path: string, why: string) {
    super(`refusing ${path}: ${why}`);
  }
}

/** Why `stats` (of an opened or lstat'ed name) is not a FIFO std2fifo may use, or undefined. */
export function fifoProblem(stats: Stats): string | undefined {
  if (!stats.isFIFO()) return `it is ${kindOf(stats)}, not a FIFO`;
  const self = process.geteuid?.();
  if (self !== undefined && stats.uid !== self) return `it belongs to uid ${stats.uid}, not to std2fifo's user (uid ${self}); remove it and std2fifo makes a new one`;
  if (stats.nlink !== 1) return `it has ${stats.nlink} names (hard links), not one`;
  if (stats.mode & 0o007) return `others may open it (mode ${octal(stats.mode)}); chmod o= it`;
  return undefined;
}

/**
 * Why `stats` is not a peer directory std2fifo may use, or undefined. One it has just made must
 * still be its own; one that was there is used unless others may write in it, or it belongs to
 * another user and the root lets anyone make it (as /tmp does). Its owner and group are trusted:
 * in a root that only they can write to, they made it.
 */
export function directoryProblem(stats: Stats, made: boolean, root: { path: string; stats: Stats }): string | undefined {
  if (!stats.isDirectory()) return `it is ${kindOf(stats)}, not a directory`;
  const self = process.geteuid?.();
  const foreign = self !== undefined && stats.uid !== self;
  if (foreign && made) return `it was replaced by a directory of uid ${stats.uid} after std2fifo made it`;
  if (foreign && root.stats.mode & 0o002) return `it belongs to uid ${stats.uid}, and anyone may create it in ${root.path} (mode ${octal(root.stats.mode)})`;
  if (stats.mode & 0o002) return `others may write to it (mode ${octal(stats.mode)}); chmod o-w it`;
  return undefined;
}

/** "a symbolic link", "a regular file", ...: what stands where a FIFO or directory should. */
export function kindOf(stats: Stats): string {
  if (stats.isSymbolicLink()) return 'a symbolic link';
  if (stats.isFile()) return 'a regular file';
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isSocket()) return 'a socket';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  return 'of an unknown type';
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}
