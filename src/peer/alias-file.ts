import { closeSync, fchmodSync, openSync, readFileSync, writeSync, constants } from 'node:fs';
import type { Logger } from '../log/logger.js';
import { lazyModule } from '../os/lazy-module.js';
import { isFingerprint } from './fingerprint.js';

// About 10 ms of fp2alias's start-up that only a registration needs.
const lockfile = lazyModule<typeof import('proper-lockfile')>('proper-lockfile');

export interface AliasProblem {
  line: number;
  message: string;
}

export interface AliasTable {
  byFingerprint: Map<string, string>;
  byAlias: Map<string, string>;
  /** Malformed lines: reported and skipped, never fatal. */
  problems: AliasProblem[];
}

/** Why `alias` cannot be one (a sentence for the peer), or undefined when it is fine. */
export function aliasProblem(alias: string): string | undefined {
  if (alias.length === 0) return 'An alias is required.';
  if (!/^[a-z0-9]*$/.test(alias)) return 'An alias may contain only lowercase letters (a-z) and digits (0-9).';
  if (alias.length < 2 || alias.length > 32) return 'An alias must be 2 to 32 characters long.';
  return undefined;
}

/**
 * Parses `<fingerprint> <alias>` lines (blanks between them; blank lines and `#` comments allowed).
 * The first entry for a fingerprint or an alias wins; later duplicates are reported as problems.
 */
export function parseAliases(text: string): AliasTable {
  const table: AliasTable = { byFingerprint: new Map(), byAlias: new Map(), problems: [] };
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) return;
    const problem = (message: string): void => void table.problems.push({ line: index + 1, message });
    const fields = line.split(/[ \t]+/);
    if (fields.length !== 2) return problem('expected "<fingerprint> <alias>"');
    const [fingerprint, alias] = fields as [string, string];
    if (!isFingerprint(fingerprint)) return problem('the fingerprint is not 64 lowercase hex digits');
    const aliasError = aliasProblem(alias);
    if (aliasError) return problem(`bad alias: ${aliasError}`);
    if (table.byFingerprint.has(fingerprint)) return problem('the fingerprint is listed already');
    if (table.byAlias.has(alias)) return problem(`the alias "${alias}" is listed already`);
    table.byFingerprint.set(fingerprint, alias);
    table.byAlias.set(alias, fingerprint);
  });
  return table;
}

/** Logs each malformed line of `file` as a warning, and passes the table on. */
export function logProblems(table: AliasTable, file: string, log: Logger): AliasTable {
  for (const problem of table.problems) log.warning(`${file}, line ${problem.line}: ${problem.message}; line skipped`);
  return table;
}

/** Reads and parses the alias file; a missing file is an empty table ("no aliases yet"). */
export function readAliases(file: string): AliasTable {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return parseAliases('');
    throw error;
  }
  return parseAliases(text);
}

export type Registration =
  | { added: true; table: AliasTable }
  | { added: false; taken: 'alias' | 'fingerprint'; table: AliasTable };

/**
 * Adds `<fingerprint> <alias>` to the file. The file is created (mode 0640) if missing; then, under
 * a lock that every registering fp2alias takes, it is read again, checked that neither the alias
 * nor the fingerprint is taken, and appended to, so that concurrent registrations land once each.
 */
export async function registerAlias(file: string, fingerprint: string, alias: string): Promise<Registration> {
  const { lock } = lockfile(); // loaded before the file is touched
  createIfMissing(file);
  const release = await lock(file, {
    stale: 10_000,
    retries: { retries: 200, factor: 1.3, minTimeout: 5, maxTimeout: 100, randomize: true },
  });
  try {
    const text = readFileSync(file, 'utf8');
    const table = parseAliases(text);
    if (table.byFingerprint.has(fingerprint)) return { added: false, taken: 'fingerprint', table };
    if (table.byAlias.has(alias)) return { added: false, taken: 'alias', table };
    const separator = text.length > 0 && !text.endsWith('\n') ? '\n' : '';
    const fd = openSync(file, constants.O_WRONLY | constants.O_APPEND);
    try {
      writeSync(fd, `${separator}${fingerprint} ${alias}\n`);
    } finally {
      closeSync(fd);
    }
    table.byFingerprint.set(fingerprint, alias);
    table.byAlias.set(alias, fingerprint);
    return { added: true, table };
  } finally {
    await release();
  }
}

function createIfMissing(file: string): void {
  let fd: number;
  try {
    fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o640);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return;
    throw error;
  }
  try {
    fchmodSync(fd, 0o640); // whatever the umask
  } finally {
    closeSync(fd);
  }
}
