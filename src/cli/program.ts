import { Command, InvalidArgumentError } from 'commander';
import type { Logger } from '../logger.js';
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
