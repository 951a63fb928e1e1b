import { fp2alias, UsageError } from '../helpers/fp2alias.js';
import { reason } from '../reason.js';
import { commandEnvironment } from './launcher.js';
import { createProgram, exitWhenDone, logOptions, startLogging, type LogChoices } from './program.js';

const program = logOptions(
  createProgram(
    'fp2alias',
    '[option ...] [--] [<command> [argument ...]]',
    'A helper for tlsd: looks the peer fingerprint (SHA256) up in an alias file and runs <command> ' +
      'with ALIAS set to the alias found; with no command, prints the alias. An unknown peer is ' +
      'refused, or with -a asked for an alias to register.',
  )
    .option('-f, --file <file>', 'the alias file, "<fingerprint> <alias>" lines', '/etc/tls/aliases')
    .option('-a, --add', 'let unknown peers register an alias'),
  'fp2alias',
)
  .argument('[command]', 'the program to run, found on PATH')
  .argument('[argument...]', "the program's arguments");

interface CliOptions extends LogChoices {
  file: string;
  add?: boolean;
}

program.parse();
const cli = program.opts<CliOptions>();
const [command, args] = program.processedArgs as [string | undefined, string[]];
const log = startLogging(cli);

exitWhenDone(log, fp2alias({ file: cli.file, add: cli.add === true, command, args, env: commandEnvironment(process.env), log }), (error) =>
  error instanceof UsageError ? error.message : `${cli.file}: ${reason(error)}`,
);
