import { chmodSync, lstatSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { childProcess } from '../os/lazy-module.js';

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
 * already is reused, provided the FIFOs are FIFOs. The root must exist.
 */
export function prepareFifoDir(root: string, name: string): FifoPaths {
  const problem = componentProblem(name);
  if (problem) throw new Error(`unsafe directory name ${JSON.stringify(name)}: ${problem}`);
  const dir = join(root, name);
  try {
    mkdirSync(dir, { mode: 0o770 });
    chmodSync(dir, 0o770); // whatever the umask
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw withPath(error, `cannot create ${dir}`);
    if (!lstatSync(dir).isDirectory()) throw new Error(`${dir} exists and is not a directory`);
  }
  const paths = { dir, in: join(dir, 'in'), out: join(dir, 'out') };
  makeFifo(paths.in, '0620');
  makeFifo(paths.out, '0640');
  return paths;
}

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

function isFifo(path: string): boolean {
  try {
    const stat = lstatSync(path);
    if (!stat.isFIFO()) throw new Error(`${path} exists and is not a FIFO`);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

function withPath(error: unknown, what: string): Error {
  const code = (error as NodeJS.ErrnoException).code;
  const message = (error as Error).message.replace(/^[A-Z0-9_]+: /, '').replace(/, \w+ '.*'$/, '');
  return new Error(`${what}: ${message}${code && !message.includes(code) ? ` (${code})` : ''}`);
}
