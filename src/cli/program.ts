import { Command, InvalidArgumentError } from 'commander';
import { Logger } from '../logger.js';
import { reason } from '../reason.js';
import { version } from '../version.js';

/**
 * The conventions every program here shares: short options as the original's plus long forms,
 * `-h` on stdout (exit 0), `--version`, and for a bad option or a missing argument one error line
 * and the usage on stderr, exit 1. Options end at the first operand, so the command's own options
 * (`tlsd -- sh -c ...`, `tlsd cat -n`) pass through untouched.
 */
export function createProgram(name: string, usage: string, description: string): Command {
  return new Command(name)
    .usage(usage)
    .description(description)
    .helpOption('-h, --help', 'print this help and exit')
    .version(version, '--version', 'print the version and exit')
    .passThroughOptions()
    .showHelpAfterError(`Usage: ${name} ${usage}\nRun '${name} -h' for the options.`)
    .configureHelp({ sortOptions: false });
}

/** For option values that must be whole numbers in a range. */
export function integerIn(min: number, max: number): (value: string) => number {
  return (value) => {
    if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}.`);
    const number = Number(value);
    if (number < min || number > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}.`);
    return number;
  };
}

/** Start-up failures: one line on stderr (and syslog), exit 1, never a stack trace. */
export function fail(log: Logger, message: string): never {
  log.errorToStderr(message);
  process.exit(1);
}

/**
 * Ends the process with the status `run` settles to, or with `fail` and the message `describe`
 * makes of its error. A promise rather than top-level await: the helpers are bundled as CommonJS,
 * which starts sooner (scripts/bundle.mjs).
 */
export function exitWhenDone(log: Logger, run: Promise<number>, describe: (error: unknown) => string): void {
  run
    .then((status) => {
      log.close();
      process.exit(status);
    })
    .catch((error: unknown) => fail(log, describe(error)));
}

/** The logging options every program has: -i (syslog identifier) and -e (stderr too). */
export function logOptions(program: Command, ident: string): Command {
  return program
    .option('-i, --ident <ident>', 'syslog identifier', ident)
    .option('-e, --stderr', 'print messages to stderr as well as to syslog');
}

export interface LogChoices {
  ident: string;
  stderr?: boolean;
}

/** The program's logger; from here on an unexpected exception is one log line and exit 1. */
export function startLogging(choices: LogChoices): Logger {
  const log = new Logger({ ident: choices.ident, stderr: choices.stderr === true, syslogPath: process.env.TLSD_SYSLOG_SOCKET });
  process.on('uncaughtException', (error) => fail(log, `internal error: ${reason(error)}`));
  return log;
}
