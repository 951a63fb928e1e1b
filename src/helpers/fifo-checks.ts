import type { BigIntStats, StatsBase } from 'node:fs';

/*
 * What std2fifo accepts as a peer's directory and FIFOs. The directory is shared with a group
 * (std2fifo(1)), and anyone who can write in it can put something else under the names `in` and
 * `out` between two of std2fifo's opens: a symbolic link to a file, a tty or a FIFO elsewhere, a
 * file or a FIFO of their own, a second name for another peer's FIFO, another peer's FIFO moved
 * there; and anyone who can write in the root can rename the directory itself and put a link to
 * another one in its place. So every open checks what it got: only a FIFO that std2fifo's user
 * owns, that has no other name and that others cannot open, and that is the very file std2fifo
 * made or found at start (the same inode), carries a peer's data.
 */

/** Stats in numbers or in bigints (the exact ones: an inode number may not fit in a double). */
type AnyStats = StatsBase<number> | StatsBase<bigint>;

/**
 * Which file a name led to, whatever the name leads to now. Device and inode number name a file
 * only while it exists: ext4 gives a new file the number of one just removed. So std2fifo holds
 * what it takes (fifo-hold.ts), and a number it holds is nobody else's.
 */
export interface FileId {
  dev: bigint;
  ino: bigint;
}

export function fileId(stats: BigIntStats): FileId {
  return { dev: stats.dev, ino: stats.ino };
}

/** Whether `stats` are of the file `id` names. */
export function isFile(stats: BigIntStats | undefined, id: FileId): boolean {
  return stats?.dev === id.dev && stats.ino === id.ino;
}

/** A refusal: the path and why, as one line for the log. */
export class Refused extends Error {
  constructor(path: string, why: string) {
    super(`refusing ${path}: ${why}`);
  }
}

/** Why `stats` (of an opened or lstat'ed name) is not a FIFO std2fifo may use, or undefined. */
export function fifoProblem(stats: AnyStats): string | undefined {
  if (!stats.isFIFO()) return `it is ${kindOf(stats)}, not a FIFO`;
  const self = process.geteuid?.();
  const [uid, nlink, mode] = [Number(stats.uid), Number(stats.nlink), Number(stats.mode)];
  if (self !== undefined && uid !== self) return `it belongs to uid ${uid}, not to std2fifo's user (uid ${self}); remove it and std2fifo makes a new one`;
  if (nlink !== 1) return `it has ${nlink} names (hard links), not one`;
  if (mode & 0o007) return `others may open it (mode ${octal(mode)}); chmod o= it`;
  return undefined;
}

/**
 * Why what a name leads to now (`stats`, undefined if nothing) is not the directory or FIFO that
 * std2fifo took at start (`taken`), or undefined when it is. A FIFO of std2fifo's user moved in
 * from another peer's directory passes fifoProblem; only its inode tells it apart.
 */
export function replacementProblem(stats: BigIntStats | undefined, taken: FileId, what: 'directory' | 'FIFO'): string | undefined {
  const start = what === 'FIFO' ? 'the one std2fifo made or found at start' : 'the directory std2fifo opened at start';
  if (!stats) return `it is gone (renamed or removed), so it is not ${start}`;
  if (isFile(stats, taken)) return undefined;
  const kind = kindOf(stats);
  return `it is ${kind === `a ${what}` ? `another ${what}` : kind} now, not ${start}`;
}

/**
 * Why `stats` is not a peer directory std2fifo may use, or undefined. One it has just made must
 * still be its own; one that was there is used unless others may write in it, or it belongs to
 * another user and the root lets anyone make it (as /tmp does). Its owner and group are trusted:
 * in a root that only they can write to, they made it.
 */
export function directoryProblem(stats: AnyStats, made: boolean, root: { path: string; stats: AnyStats }): string | undefined {
  if (!stats.isDirectory()) return `it is ${kindOf(stats)}, not a directory`;
  const self = process.geteuid?.();
  const [uid, mode, rootMode] = [Number(stats.uid), Number(stats.mode), Number(root.stats.mode)];
  const foreign = self !== undefined && uid !== self;
  if (foreign && made) return `it was replaced by a directory of uid ${uid} after std2fifo made it`;
  if (foreign && rootMode & 0o002) return `it belongs to uid ${uid}, and anyone may create it in ${root.path} (mode ${octal(rootMode)})`;
  if (mode & 0o002) return `others may write to it (mode ${octal(mode)}); chmod o-w it`;
  return undefined;
}

/** "a symbolic link", "a regular file", ...: what stands where a FIFO or directory should. */
export function kindOf(stats: AnyStats): string {
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
