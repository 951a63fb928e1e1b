import { closeSync, constants, fchmodSync, fstatSync, lstatSync, mkdirSync, openSync, statSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { reason } from '../log/reason.js';
import { childProcess } from '../os/lazy-module.js';
import { directoryProblem, fifoProblem, fileId, isFile, kindOf, Refused, replacementProblem, type FileId } from './fifo-checks.js';
import { holdFile } from './fifo-hold.js';

/** One of a peer's FIFOs, as std2fifo took it at start. */
export interface PeerFifo {
  dir: FifoDir;
  name: 'in' | 'out';
  /** `<root>/<name>/in`: what local programs open, and what log lines name. */
  path: string;
  /** The FIFO std2fifo made or found at start: every later open must find this one. */
  id: FileId;
}

/** Why `name` cannot be one directory name below the root, or undefined when it can. */
export function componentProblem(name: string): string | undefined {
  if (name === '') return 'it is empty';
  if (name === '.' || name === '..') return `"${name}" is not a directory name`;
  if (name.includes('/')) return 'it contains "/"';
  if (name.includes('\0')) return 'it contains a NUL character';
  return undefined;
}

/**
 * A peer's directory, held open from start to end. A name is looked up again at every use, and the
 * group can rename `<root>/<name>` and put a link to any directory in its place; so std2fifo reaches
 * its FIFOs through the descriptor of the directory it checked, never through that name: the open
 * of `/proc/self/fd/N/in` resolves N to that very directory, whatever its name leads to now. It
 * also holds the FIFOs it takes at start, so that their inode numbers stay theirs (fifo-checks.ts).
 *
 * Who reaches the FIFOs: std2fifo's user and the directory's group. The directory it makes is
 * 0770, so no one else can look up a name in it, and every FIFO it opens gives others nothing.
 */
export class FifoDir {
  readonly in: PeerFifo;
  readonly out: PeerFifo;
  private readonly id: FileId;
  /** The directory's descriptor and the FIFOs' (O_PATH): all closed by close(). */
  private readonly held: number[];
  private open = true;

  /** Takes `fd`, the directory's, and closes it if it cannot be used. */
  private constructor(
    /** `<root>/<name>`, for log lines and the check that the name still leads here. */
    readonly path: string,
    private readonly fd: number,
  ) {
    this.held = [fd];
    try {
      this.id = reachableByProc(path, fd);
      this.in = this.take('in', '0620');
      this.out = this.take('out', '0640');
    } catch (error) {
      this.close();
      throw error;
    }
  }

  /**
   * Makes `<root>/<name>/` (mode 0770) with the FIFOs `in` (0620) and `out` (0640); whatever exists
   * already is used if fifo-checks.ts accepts it. The root must exist.
   */
  static prepare(root: string, name: string): FifoDir {
    const problem = componentProblem(name);
    if (problem) throw new Error(`unsafe directory name ${JSON.stringify(name)}: ${problem}`);
    const path = join(root, name);
    return new FifoDir(path, openChecked(root, path, makeDir(path)));
  }

  /** The path of `name` in this directory through its descriptor; O_NOFOLLOW still guards `name`. */
  entry(name: string): string {
    if (!this.open) throw new Error(`${this.path} is closed`); // its number may belong to another file by now
    return `/proc/self/fd/${this.fd}/${name}`;
  }

  /** What `name` is in this directory, not following a link; undefined if nothing. */
  lstat(name: string): BigIntStats | undefined {
    return lstatOrNothing(this.entry(name));
  }

  /**
   * Refuses once `<root>/<name>` leads elsewhere. The descriptor keeps std2fifo's opens in its own
   * directory regardless; this ends a session that local programs can no longer reach by name, and
   * says so, rather than leave the peer talking into a renamed directory.
   */
  checkName(): void {
    const problem = replacementProblem(lstatOrNothing(this.path), this.id, 'directory');
    if (problem) throw new Refused(this.path, problem);
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    for (const fd of this.held) closeSync(fd);
  }

  /** Makes the FIFO `name` unless it is there, and takes it if fifo-checks.ts accepts it. */
  private take(name: 'in' | 'out', mode: string): PeerFifo {
    const path = join(this.path, name);
    let pin = holdFile(this.entry(name), path);
    if (pin === undefined) {
      this.makeFifo(name, mode, path);
      pin = holdFile(this.entry(name), path);
    }
    if (pin === undefined) throw new Error(`cannot create the FIFO ${path}: it was removed at once`);
    this.held.push(pin);
    const stats = fstatSync(pin, { bigint: true });
    const problem = fifoProblem(stats);
    if (problem) throw new Refused(path, problem);
    return { dir: this, name, path, id: fileId(stats) };
  }

  // Node has no mkfifo; coreutils' does it, with the mode set exactly (-m ignores the umask), in
  // this directory: mkfifo gets its descriptor as its fd 3.
  private makeFifo(name: string, mode: string, path: string): void {
    const inChild = `/proc/self/fd/3/${name}`;
    try {
      childProcess().execFileSync('mkfifo', ['-m', mode, '--', inChild], { stdio: ['ignore', 'ignore', 'pipe', this.fd] });
    } catch (error) {
      if (this.lstat(name)) return; // another std2fifo for the same peer made it meanwhile
      const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim().replaceAll(inChild, path);
      throw new Error(`cannot create the FIFO ${path}: ${stderr || (error as Error).message}`);
    }
  }
}

/** Whether it made `dir`. The umask can only take bits from 0770: never looser, even for a moment. */
function makeDir(dir: string): boolean {
  try {
    mkdirSync(dir, { mode: 0o770 });
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw withPath(error, `cannot create ${dir}`);
    return false;
  }
}

/**
 * Opens the directory itself (never through a link), checks it, and gives one it made exactly
 * 0770 (keeping set-group-ID, so that its FIFOs get its group) through the descriptor: a name
 * swapped meanwhile cannot turn the chmod onto another directory. Returns the descriptor.
 */
function openChecked(root: string, dir: string, made: boolean): number {
  let fd: number;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOTDIR') throw new Refused(dir, `it is ${kindOf(lstatSync(dir))}, not a directory`);
    throw withPath(error, `cannot open ${dir}`);
  }
  try {
    const stats = fstatSync(fd);
    const problem = directoryProblem(stats, made, { path: root, stats: statSync(root) });
    if (problem) throw new Refused(dir, problem);
    if (made) fchmodSync(fd, 0o770 | (stats.mode & SET_GROUP_ID));
    return fd;
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

const SET_GROUP_ID = 0o2000; // S_ISGID, which Node's fs.constants lacks

/** The directory's identity, once it is sure that /proc/self/fd/N leads to it (Linux's /proc). */
function reachableByProc(dir: string, fd: number): FileId {
  const id = fileId(fstatSync(fd, { bigint: true }));
  if (!isFile(lstatOrNothing(`/proc/self/fd/${fd}/.`), id)) {
    throw new Error(`cannot reach ${dir} through /proc/self/fd: std2fifo opens its FIFOs through the directory's descriptor, which needs Linux's /proc`);
  }
  return id;
}

function lstatOrNothing(path: string): BigIntStats | undefined {
  try {
    return lstatSync(path, { bigint: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

function withPath(error: unknown, what: string): Error {
  return new Error(`${what}: ${reason(error)}`);
}
