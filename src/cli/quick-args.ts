import type { OptionSpec, ParsedArgs, ProgramSpec } from './option-spec.js';

/**
 * Reads a command line the way commander reads it for `spec` (program.ts: options end at the first
 * operand, `-xVALUE` and `--long=VALUE`, grouped flags, the last of a repeated option wins), for
 * the lines that parse cleanly; undefined for anything else (help, version, an unknown option, a
 * missing value or operand, too many operands), which commander then handles and explains.
 * fp2alias and std2fifo start once per connection, and loading commander would be a good part of
 * each start (docs/performance.md, "Start-up"); test/unit-quick-args.ts holds the two parsers to
 * one result.
 */
export function quickParse(spec: ProgramSpec, argv: readonly string[]): ParsedArgs | undefined {
  // commander reads `--no-x` as x turned off; no helper has one, and this parser does not try.
  if (spec.options.some((option) => option.long.startsWith('--no-'))) return undefined;
  const options: Record<string, string | true> = {};
  for (const option of spec.options) if (option.default !== undefined) options[keyOf(option)] = option.default;
  const byFlag = new Map<string, OptionSpec>();
  for (const option of spec.options) byFlag.set(option.short, option).set(option.long, option);

  let operands: string[] = [];
  let i = 0;
  while (i < argv.length) {
    const arg = argv[i++]!;
    if (arg === '--') {
      operands = argv.slice(i);
      break;
    }
    if (!isOption(arg)) {
      operands = argv.slice(i - 1);
      break;
    }
    const whole = byFlag.get(arg);
    if (whole) {
      if (whole.value === undefined) options[keyOf(whole)] = true;
      else if (i < argv.length) options[keyOf(whole)] = argv[i++]!;
      else return undefined;
      continue;
    }
    if (arg[1] !== '-') {
      // -cVALUE, or grouped flags -ce
      let group = arg.slice(1);
      while (group !== '') {
        const option = byFlag.get(`-${group[0]}`);
        if (!option) return undefined;
        if (option.value !== undefined) {
          if (group.length === 1) return undefined; // its value is the next argument: a form left to commander
          options[keyOf(option)] = group.slice(1);
          break;
        }
        options[keyOf(option)] = true;
        group = group.slice(1);
      }
      continue;
    }
    const equals = arg.indexOf('=');
    const option = equals > 2 ? byFlag.get(arg.slice(0, equals)) : undefined;
    if (option?.value === undefined) return undefined;
    options[keyOf(option)] = arg.slice(equals + 1);
  }

  const required = spec.operands.filter((operand) => operand.syntax.startsWith('<')).length;
  const variadic = spec.operands.some((operand) => operand.syntax.endsWith('...]') || operand.syntax.endsWith('...>'));
  if (operands.length < required || (!variadic && operands.length > spec.operands.length)) return undefined;
  return { options, operands };
}

/** As commander names an option's value: `--some-thing` → `someThing`. */
function keyOf(option: OptionSpec): string {
  return option.long
    .slice(2)
    .split('-')
    .reduce((name, word) => name + word.charAt(0).toUpperCase() + word.slice(1));
}

function isOption(arg: string): boolean {
  return arg.length > 1 && arg[0] === '-';
}

/**
 * A helper's command line: read here when it parses cleanly, else by commander, which may print
 * and exit. program.ts is our own module, so it is imported rather than loaded with lazyModule
 * (which is for packages and built-ins); the bundles keep it, and the commander it requires, unrun
 * until then.
 */
export async function readCommandLine(spec: ProgramSpec, argv: readonly string[]): Promise<ParsedArgs> {
  return quickParse(spec, argv) ?? (await import('./program.js')).parseWithCommander(spec, argv);
}

/** The value of an option that has one (given, or its default). */
export function optionValue(parsed: ParsedArgs, name: string): string {
  const value = parsed.options[name];
  // Only a spec and a program that disagree on the option's name get here: a bug, not bad input.
  if (typeof value !== 'string') throw new Error(`the option --${name} has no value`);
  return value;
}
