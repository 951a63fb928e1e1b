import { execFileSync } from 'node:child_process';
import { accessSync, constants, readlinkSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import { basename, dirname, resolve, sep } from 'node:path';

/*
 * Why tlsd's user cannot read a file, and what an administrator changes so that it can. tlsd
 * started as root with --user reads its key as root, then drops; a reload (SIGHUP) reads it again
 * as the user, and a key only root may read then fails with EACCES. The set-up the manual
 * documents is a key readable by tlsd's group (root:GROUP 0640, its directory root:GROUP 0750),
 * so the advice names that group and the exact commands.
 */

/** Who tlsd runs as: names for the advice, numbers when the name service has none. */
function whoAmI(): { user: string; group: string } {
  let user: string;
  try {
    user = userInfo().username;
  } catch {
    user = `uid ${process.geteuid?.()}`;
  }
  return { user, group: groupName(process.getegid?.() ?? 0) };
}

/** A group's name from the name service, else its number (chgrp and usermod take either). */
function groupName(gid: number): string {
  try {
    return execFileSync('getent', ['group', String(gid)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split(':')[0] || String(gid);
  } catch {
    return String(gid);
  }
}

/**
 * What stops this process reading `file`, as "make … (commands)", or undefined when it can read
 * it, when it runs as root (root is not stopped by modes), or when something else is wrong.
 */
export function readAdvice(file: string): { user: string; advice: string } | undefined {
  if (process.geteuid?.() === 0 || canAccess(file, constants.R_OK)) return undefined;
  const { user, group } = whoAmI();
  const path = resolve(file);
  const blocked = unsearchableDirectory(path);
  if (blocked !== undefined) return { user, advice: directoryAdvice(blocked, path, user, group) };
  const reach = accessError(path, constants.F_OK);
  const link = linkTarget(path);
  if (link !== undefined && reach === 'EACCES') {
    // A link into a directory kept from us (certbot's live/ is root's alone): a copy is the way.
    return { user, advice: `it links to ${link}, which that user cannot reach; install a copy readable by group ${group} instead (install -m 0640 -o root -g ${group} ${shellWord(link)} ${shellWord(path)})` };
  }
  if (reach !== undefined) return undefined; // missing, not forbidden
  return { user, advice: `make it readable by group ${group} (chgrp ${group} ${shellWord(path)} && chmod 0640 ${shellWord(path)})` };
}

/**
 * How to let `user` through `dir` without breaking what else relies on it: a directory that already
 * lets its own group in (`/etc/ssl/private`, root:ssl-cert 0710) is shared, so join that group; a
 * home directory is nobody's to open up, so keep a copy elsewhere; any other (root's alone) is
 * given to tlsd's group.
 */
function directoryAdvice(dir: string, path: string, user: string, group: string): string {
  const status = statSync(dir);
  if (status.gid !== 0 && (status.mode & 0o010) !== 0) {
    const owners = groupName(status.gid);
    return `add user ${user} to group ${owners}, which may search the directory ${dir} (usermod -a -G ${owners} ${user})`;
  }
  if (dir === '/root' || dir === '/home' || dirname(dir) === '/home') {
    const copy = `/etc/tlsd/${basename(path)}`;
    return `the home directory ${dir} is in the way; keep a copy readable by group ${group} instead (install -D -m 0640 -o root -g ${group} ${shellWord(path)} ${shellWord(copy)}) and name that`;
  }
  return `make the directory ${dir} searchable by group ${group} (chgrp ${group} ${shellWord(dir)} && chmod g+x ${shellWord(dir)})`;
}

/** The first directory on the way to `path` that this process may not search. */
function unsearchableDirectory(path: string): string | undefined {
  const parts = dirname(path).split(sep).filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const dir = sep + parts.slice(0, i).join(sep);
    if (!canAccess(dir, constants.X_OK)) return dir;
  }
  return undefined;
}

/** Where the symbolic link `path` points, as an absolute path; undefined if it is not a link. */
function linkTarget(path: string): string | undefined {
  try {
    return resolve(dirname(path), readlinkSync(path));
  } catch {
    return undefined;
  }
}

/** The errno code access(2) gives for `path` and `mode`, or undefined when it is allowed. */
function accessError(path: string, mode: number): string | undefined {
  try {
    accessSync(path, mode);
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? 'unknown';
  }
}

function canAccess(path: string, mode: number): boolean {
  return accessError(path, mode) === undefined;
}

/** A path as one shell word, quoted only when it needs to be. */
function shellWord(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}
