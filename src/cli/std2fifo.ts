import { std2fifo } from '../helpers/std2fifo.js';
import { reason } from '../log/reason.js';
import { std2fifoSpec } from './helper-specs.js';
import { exitWhenDone, startLogging, usageError } from './lifecycle.js';
import { optionValue, readCommandLine } from './quick-args.js';

void readCommandLine(std2fifoSpec, process.argv.slice(2)).then((parsed) => {
  const { options, operands } = parsed;
  const [root] = operands as [string]; // <dir> is required: both parsers make sure it is there
  const variable = optionValue(parsed, 'var');
  const log = startLogging({ ident: optionValue(parsed, 'ident'), stderr: options.stderr === true });
  const name = process.env[variable] ?? usageError(std2fifoSpec.name, std2fifoSpec.usage, `error: the environment variable ${variable} is not set`);
  exitWhenDone(log, std2fifo({ root, name, continuous: options.continuous === true, log, input: process.stdin, output: () => process.stdout }), reason);
});
