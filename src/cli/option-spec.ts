/**
 * A program's command line as data: commander builds its parser, help and errors from it
 * (program.ts), and the helpers' quick parser reads the common cases from it without commander
 * (quick-args.ts), so both know the same options.
 */
export interface OptionSpec {
  /** `-v` */
  short: string;
  /** `--var`; its name without the dashes is the key of the parsed value. */
  long: string;
  /** `<var>` when the option takes a value; a flag otherwise. */
  value?: string;
  description: string;
  default?: string;
}

export interface OperandSpec {
  /** As commander writes them: `<dir>` required, `[command]` optional, `[argument...]` the rest. */
  syntax: string;
  description: string;
}

export interface ProgramSpec {
  name: string;
  usage: string;
  description: string;
  options: readonly OptionSpec[];
  operands: readonly OperandSpec[];
}

/** A command line as read for a ProgramSpec, by either parser (quick-args.ts or commander). */
export interface ParsedArgs {
  /** By option name (`--var` → `var`): a value, `true` for a flag given; defaults filled in. */
  options: Record<string, string | true>;
  operands: string[];
}

/** The logging options every program has: -i (syslog identifier) and -e (stderr too). */
export function logOptionSpecs(ident: string): OptionSpec[] {
  return [
    { short: '-i', long: '--ident', value: '<ident>', description: 'syslog identifier', default: ident },
    { short: '-e', long: '--stderr', description: 'print messages to stderr as well as to syslog' },
  ];
}

export interface LogChoices {
  ident: string;
  stderr?: boolean;
}

/** What follows a usage error's message. */
export function usageHint(name: string, usage: string): string {
  return `Usage: ${name} ${usage}\nRun '${name} -h' for the options.`;
}
