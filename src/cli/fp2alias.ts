import { fp2alias, UsageError } from '../helpers/fp2alias.js';
import { reason } from '../log/reason.js';
import { fp2aliasSpec } from './helper-specs.js';
import { commandEnvironment } from './launcher.js';
import { exitWhenDone, startLogging } from './lifecycle.js';
import { optionValue, readCommandLine } from './quick-args.js';

void readCommandLine(fp2aliasSpec, process.argv.slice(2)).then((parsed) => {
  const { options, operands } = parsed;
  const [command, ...args] = operands;
  const file = optionValue(parsed, 'file');
  const log = startLogging({ ident: optionValue(parsed, 'ident'), stderr: options.stderr === true });
  exitWhenDone(log, fp2alias({ file, add: options.add === true, command, args, env: commandEnvironment(process.env), log }), (error) =>
    error instanceof UsageError ? error.message : `${file}: ${reason(error)}`,
  );
});
