import { fp2alias, UsageError } from '../helpers/fp2alias.js';
import { reason } from '../reason.js';
import { fp2aliasSpec } from './helper-specs.js';
import { commandEnvironment } from './launcher.js';
import { exitWhenDone, startLogging } from './lifecycle.js';
import { readCommandLine } from './quick-args.js';

void readCommandLine(fp2aliasSpec, process.argv.slice(2)).then(({ options, operands }) => {
  const [command, ...args] = operands;
  const file = options.file as string;
  const log = startLogging({ ident: options.ident as string, stderr: options.stderr === true });
  exitWhenDone(log, fp2alias({ file, add: options.add === true, command, args, env: commandEnvironment(process.env), log }), (error) =>
    error instanceof UsageError ? error.message : `${file}: ${reason(error)}`,
  );
});
