import { closeSync, constants, fchmodSync, fstatSync, lstatSync, mkdirSync, openSync, statSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { childProcess } from '../os/lazy-module.js';
import { directoryProblem, fifoProblem, kindOf, Refused } from './fifo-checks.js';

export interface FifoPaths {
  dir: string;
  /** Written by local programs, copied to std2fifo's stdout (to the peer). */
  in: string;
  /** Read by local programs, fed from std2fifo's stdin (from the peer). */
  out: string;
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
 * Makes `<root>/<name>/` (mode 0770) with the FIFOs `in` (0620) and `out` (0640); whatever exists
 * already is reused if fifo-checks.ts accepts it. The root must exist.
 *
 * Who reaches the FIFOs: std2fifo's user and the directory's group. The directory it makes is
 * 0770, so no one else can look up a name in it, and every FIFO it opens gives others nothing.
 */
export function prepareFifoDir(root: string, name: string): FifoPaths {
  const problem = componentProblem(name);
  if (problem) throw new Error(`unsafe directory name ${JSON.stringify(name)}: ${problem}`);
  const dir = join(root, name);
  secureDir(root, dir, makeDir(dir));
  const paths = { dir, in: join(dir, 'in'), out: join(dir, 'out') };
  makeFifo(paths.in, '0620');
  makeFifo(paths.out, '0640');
  return paths;
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
 * swapped meanwhile cannot turn the chmod onto another directory.
 */
function secureDir(root: string, dir: string, made: boolean): void {
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
  } finally {
    closeSync(fd);
  }
}

const SET_GROUP_ID = 0o2000; // S_ISGID, which Node's fs.constants lacks

// Node has no mkfifo; coreutils' does it, with the mode set exactly (-m ignores the umask).
function makeFifo(path: string, mode: string): void {
  if (isFifo(path)) return;
  try {
    childProcess().execFileSync('mkfifo', ['-m', mode, '--', path], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (error) {
    if (isFifo(path)) return; // another std2fifo for the same peer made it meanwhile
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`cannot create the FIFO ${path}: ${stderr || (error as Error).message}`);
  }
}

/** Whether a FIFO std2fifo may use is there already; throws Refused if something else is. */
function isFifo(path: string): boolean {
  let stats: Stats;
  try {
    stats = lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
  const problem = fifoProblem(stats);
  if (problem) throw new Refused(path, problem);
  return true;
}

function withPath(error: unknown, what: string): Error {
  const code = (error as NodeJS.ErrnoException).code;
  const message = (error as Error).message.replace(/^[A-Z0-9_]+: /, '').replace(/, \w+ '.*'$/, '');
  return new Error(`${what}: ${message}${code && !message.includes(code) ? ` (${code})` : ''}`);
}
