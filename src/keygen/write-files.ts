import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

export interface OutputFile {
  path: string;
  contents: string;
  /** The mode the file is created with, so it is never more open, not even for a moment. */
  mode: number;
}

export class ExistsError extends Error {
  constructor(readonly path: string) {
    super(`${path} exists already`);
  }
}

/** Any other failure, with the file the user named (not the temporary one beside it). */
export class WriteError extends Error {
  constructor(
    readonly path: string,
    override readonly cause: unknown,
  ) {
    super(`cannot write ${path}`);
  }
}

/** The first of `paths` that exists (as anything, a dangling symbolic link too), if any. */
export async function firstExisting(paths: string[]): Promise<string | undefined> {
  for (const path of paths) {
    try {
      await lstat(path);
      return path;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
  return undefined;
}

/**
 * Writes every file or none. Without `replace`, each is created with O_EXCL, so an existing file
 * (or a symbolic link planted there) is never written through, and a failure removes what this
 * call created. With `replace`, each is written to a fresh file beside it and renamed over the
 * old one: an existing file's looser mode is not inherited, and a link is replaced, not followed.
 */
export async function writeAll(files: OutputFile[], replace: boolean): Promise<void> {
  const written: string[] = [];
  let current = files[0]?.path ?? '';
  try {
    for (const file of files) {
      current = file.path;
      await makeParents(file.path);
      const target = replace ? siblingTempName(file.path) : file.path;
      await createExclusive(target, file);
      written.push(target);
    }
    if (replace) {
      for (const [i, file] of files.entries()) {
        current = file.path;
        await rename(written[i]!, file.path);
      }
    }
  } catch (error) {
    await Promise.all(written.map((path) => rm(path, { force: true })));
    throw error instanceof ExistsError ? error : new WriteError(current, error);
  }
}

async function createExclusive(path: string, file: OutputFile): Promise<void> {
  let handle;
  try {
    handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, file.mode);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new ExistsError(path);
    throw error;
  }
  try {
    await handle.writeFile(file.contents);
    await handle.sync();
    await handle.close();
  } catch (error) {
    await handle.close().catch(() => {});
    await rm(path, { force: true });
    throw error;
  }
}

/**
 * Creates the missing directories above `path` (so /etc/tls/key.pem works on a fresh machine), one
 * level at a time: Node's recursive mkdir spins forever where mkdir fails with ENOENT under an
 * existing directory, as it does in /proc.
 */
export async function makeParents(path: string): Promise<void> {
  const missing: string[] = [];
  for (let dir = dirname(resolve(path)); dir !== dirname(dir); dir = dirname(dir)) {
    try {
      await stat(dir);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      missing.unshift(dir);
    }
  }
  for (const dir of missing) {
    try {
      await mkdir(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
  }
}

function siblingTempName(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
}
