import { logOptionSpecs, type ProgramSpec } from './option-spec.js';

// The helpers' command lines, apart from their programs so that test/unit-quick-args.ts can read them.

export const fp2aliasSpec: ProgramSpec = {
  name: 'fp2alias',
  usage: '[option ...] [--] [<command> [argument ...]]',
  description:
    'A helper for tlsd: looks the peer fingerprint (SHA256) up in an alias file and runs <command> ' +
    'with ALIAS set to the alias found; with no command, prints the alias. An unknown peer is ' +
    'refused, or with -a asked for an alias to register.',
  options: [
    { short: '-f', long: '--file', value: '<file>', description: 'the alias file, "<fingerprint> <alias>" lines', default: '/etc/tls/aliases' },
    { short: '-a', long: '--add', description: 'let unknown peers register an alias' },
    ...logOptionSpecs('fp2alias'),
  ],
  operands: [
    { syntax: '[command]', description: 'the program to run, found on PATH' },
    { syntax: '[argument...]', description: "the program's arguments" },
  ],
};

export const std2fifoSpec: ProgramSpec = {
  name: 'std2fifo',
  usage: '[option ...] [--] <dir>',
  description:
    'A helper for tlsd: makes <dir>/<value of VAR>/ with the FIFOs "in" and "out", writes what it ' +
    'reads on stdin to "out", and prints what is written to "in", until stdin ends.',
  options: [
    { short: '-v', long: '--var', value: '<var>', description: 'the environment variable that names the directory', default: 'SHA256' },
    { short: '-c', long: '--continuous', description: 'continuous streams: keep "out" open, do not reopen "in" after its end' },
    ...logOptionSpecs('std2fifo'),
  ],
  operands: [{ syntax: '<dir>', description: 'the root directory, which must exist' }],
};
