import { std2fifo } from '../helpers/std2fifo.js';
import { reason } from '../reason.js';
import { createProgram, exitWhenDone, logOptions, startLogging, type LogChoices } from './program.js';

const program = logOptions(
  createProgram(
    'std2fifo',
    '[option ...] [--] <dir>',
    'A helper for tlsd: makes <dir>/<value of VAR>/ with the FIFOs "in" and "out", writes what it ' +
      'reads on stdin to "out", and prints what is written to "in", until stdin ends.',
  )
    .option('-v, --var <var>', 'the environment variable that names the directory', 'SHA256')
    .option('-c, --continuous', 'continuous streams: keep "out" open, do not reopen "in" after its end'),
  'std2fifo',
)
  .argument('<dir>', 'the root directory, which must exist');

interface CliOptions extends LogChoices {
  var: string;
  continuous?: boolean;
}

program.parse();
const cli = program.opts<CliOptions>();
const [root] = program.processedArgs as [string];
const log = startLogging(cli);

const name = process.env[cli.var] ?? program.error(`error: the environment variable ${cli.var} is not set`);

exitWhenDone(log, std2fifo({ root, name, continuous: cli.continuous === true, log, input: process.stdin, output: process.stdout }), reason);
