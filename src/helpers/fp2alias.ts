import type { Logger } from '../log/logger.js';
import { quote } from '../log/logger.js';
import { aliasProblem, logProblems, readAliases, registerAlias } from '../peer/alias-file.js';
import { isFingerprint } from '../peer/fingerprint.js';
import { readLineFromFd, writeAllToFd } from './fd-line.js';
import { runCommand } from './run-command.js';

export interface Fp2aliasOptions {
  /** The alias file: `<fingerprint> <alias>` lines. */
  file: string;
  /** Let an unknown peer register an alias (-a). */
  add: boolean;
  /** The command to run with ALIAS set; none: print the alias. */
  command?: string;
  args: string[];
  /** The environment: SHA256 is read from it, the command gets it plus ALIAS. */
  env: NodeJS.ProcessEnv;
  log: Logger;
  /** The peer: fd 0 and fd 1 unless a test says otherwise. */
  input?: number;
  output?: number;
}

/** The longest alias line read from the peer; longer is refused without reading on. */
const maxAliasLine = 256;

/**
 * Looks the peer's fingerprint up (or registers an alias for it, with `add`), then runs the command
 * with ALIAS set. Returns the exit status; messages meant for the peer go to `output`, problems to
 * the log. Throws only for a usage problem (SHA256 missing or malformed) or an unreadable file.
 */
export async function fp2alias(options: Fp2aliasOptions): Promise<number> {
  const { log } = options;
  const input = options.input ?? 0;
  const output = options.output ?? 1;
  const say = (text: string): void => writeAllToFd(output, `${text}\n`);

  const fingerprint = options.env.SHA256;
  if (fingerprint === undefined || fingerprint === '') throw new UsageError('SHA256 is not set: run fp2alias from tlsd, which sets it to the peer fingerprint');
  if (!isFingerprint(fingerprint)) throw new UsageError(`SHA256 is not 64 lowercase hex digits: ${quote(fingerprint)}`);

  const table = logProblems(readAliases(options.file), options.file, log);
  let alias = table.byFingerprint.get(fingerprint);

  if (alias === undefined) {
    if (!options.add) {
      log.notice(`unknown fingerprint ${fingerprint}: refused`);
      say("I don't recognize you.");
      return 1;
    }
    say('Enter your alias, please.');
    const answer = readLineFromFd(input, maxAliasLine);
    if ('eof' in answer) {
      log.notice(`fingerprint ${fingerprint}: no alias given (end of input)`);
      return 1;
    }
    const wanted = 'line' in answer ? answer.line.trim() : undefined;
    const problem = wanted === undefined ? `An alias must be 2 to 32 characters long.` : aliasProblem(wanted);
    if (wanted === undefined || problem !== undefined) {
      log.notice(`fingerprint ${fingerprint}: refused alias ${wanted === undefined ? '(too long)' : quote(wanted)}: ${problem}`);
      say(problem!);
      return 1;
    }
    const result = await registerAlias(options.file, fingerprint, wanted);
    if (!result.added) {
      if (result.taken === 'alias') {
        log.notice(`fingerprint ${fingerprint}: the alias "${wanted}" is taken`);
        say(`The '${wanted}' alias is taken already.`);
        return 1;
      }
      // The same peer registered in another connection meanwhile: that alias is theirs.
      alias = result.table.byFingerprint.get(fingerprint)!;
      log.notice(`fingerprint ${fingerprint} registered meanwhile as "${alias}"`);
      if (alias !== wanted) {
        say(`You are registered already, as '${alias}'.`);
        return 1;
      }
    } else {
      log.info(`registered "${wanted}" for ${fingerprint}`);
      alias = wanted;
    }
  }

  if (options.command === undefined) {
    say(alias);
    return 0;
  }
  const result = await runCommand(options.command, options.args, { ...options.env, ALIAS: alias });
  if ('failed' in result) log.errorToStderr(`cannot run ${quote(options.command)}: ${result.failed}`);
  return result.status;
}

/** A problem with how fp2alias was invoked (its environment), as opposed to with the peer. */
export class UsageError extends Error {}

