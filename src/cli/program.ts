import { Command, InvalidArgumentError } from 'commander';
import { version } from '../package-files.js';
import { logOptionSpecs, usageHint, type OptionSpec, type ParsedArgs, type ProgramSpec } from './option-spec.js';

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
    .showHelpAfterError(usageHint(name, usage))
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

/** The logging options every program has: -i (syslog identifier) and -e (stderr too). */
export function logOptions(program: Command, ident: string): Command {
  return addOptions(program, logOptionSpecs(ident));
}

function addOptions(program: Command, options: readonly OptionSpec[]): Command {
  for (const option of options) {
    const flags = `${option.short}, ${option.long}${option.value === undefined ? '' : ` ${option.value}`}`;
    program.option(flags, option.description, option.default);
  }
  return program;
}

/** The program `spec` describes. */
export function programFromSpec(spec: ProgramSpec): Command {
  const program = addOptions(createProgram(spec.name, spec.usage, spec.description), spec.options);
  for (const operand of spec.operands) program.argument(operand.syntax, operand.description);
  return program;
}

/** Parses `argv` (arguments only) with commander: prints help, the version or an error and exits when asked to. */
export function parseWithCommander(spec: ProgramSpec, argv: readonly string[]): ParsedArgs {
  const program = programFromSpec(spec).parse(argv, { from: 'user' });
  return { options: program.opts(), operands: program.args };
}
