import { execFileSync } from 'node:child_process';
import { reason } from '../log/reason.js';

// POSIX-only calls; @types/node leaves initgroups out.
const posix = process as NodeJS.Process & { initgroups: (user: string | number, extraGroup: string | number) => void };

export interface Privileges {
  user?: string;
  group?: string;
}

/** The account tlsd becomes: looked up before it binds, so a typo fails before the Listening line. */
export interface Account {
  user?: string;
  uid?: number;
  gid: number;
}

/**
 * Looks the user and group up through the name service (`id`, `getent`), so users from LDAP or
 * systemd's dynamic users work too. Undefined when neither was asked for.
 */
export function resolvePrivileges({ user, group }: Privileges): Account | undefined {
  if (user === undefined && group === undefined) return undefined;
  const uid = user === undefined ? undefined : lookUp(['id', '-u', '--', user], `Cannot switch to user ${user}: no such user`);
  const gid =
    group !== undefined
      ? /^\d+$/.test(group)
        ? Number(group)
        : lookUp(['getent', 'group', '--', group], `Cannot switch to group ${group}: no such group`, (line) => line.split(':')[2])
      : lookUp(['id', '-g', '--', user!], `Cannot switch to user ${user}: no such user`);
  return { user, uid, gid };
}

/**
 * Becomes the user (with its supplementary groups) and group for good: called once the port is
 * bound and the key read, so children run as that user too.
 */
export function dropPrivileges(account: Account | undefined): void {
  if (account === undefined) return;
  const { user, uid, gid } = account;
  try {
    if (user !== undefined) posix.initgroups(user, gid);
    else posix.setgroups!([gid]);
    posix.setgid!(gid);
  } catch (error) {
    throw new Error(`Cannot switch to group ${gid}: ${reason(error)}`);
  }
  if (uid === undefined) return;
  try {
    posix.setuid!(uid);
  } catch (error) {
    throw new Error(`Cannot switch to user ${user}: ${reason(error)}`);
  }
}

function lookUp(command: string[], failure: string, pick: (output: string) => string | undefined = (output) => output): number {
  let output: string;
  try {
    output = execFileSync(command[0]!, command.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    throw new Error(failure);
  }
  const value = pick(output);
  if (value === undefined || !/^\d+$/.test(value)) throw new Error(failure);
  return Number(value);
}
