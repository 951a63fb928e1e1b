import t from 'tap';
import { fp2aliasSpec, std2fifoSpec } from '../src/cli/helper-specs.js';
import type { ProgramSpec } from '../src/cli/option-spec.js';
import { programFromSpec } from '../src/cli/program.js';
import type { ParsedArgs } from '../src/cli/option-spec.js';
import { quickParse } from '../src/cli/quick-args.js';
import { runProgram } from './lib/run.js';
import { installed } from './lib/tlsd.js';

// fp2alias and std2fifo read their command line without commander when it parses cleanly, and
// hand everything else to commander. The two must never disagree: for each line below, either the
// quick parser declines, or commander accepts the line and reads the same options and operands.

/** What commander makes of `argv`, or 'refused' for help, version and errors (it would print and exit). */
function commanderParse(spec: ProgramSpec, argv: string[]): ParsedArgs | 'refused' {
  const program = programFromSpec(spec)
    .exitOverride()
    .configureOutput({ writeOut: () => {}, writeErr: () => {} });
  try {
    program.parse(argv, { from: 'user' });
  } catch {
    return 'refused';
  }
  return { options: program.opts(), operands: program.args };
}

const std2fifoLines: string[][] = [
  [],
  ['/r'],
  ['-v', 'ALIAS', '/r'],
  ['--var', 'X', '/r'],
  ['--var=X', '/r'],
  ['--var=', '/r'],
  ['--var=a=b', '/r'],
  ['-vX', '/r'],
  ['-v', '', '/r'],
  ['-v', '-c', '/r'],
  ['-v', '--', '/r'],
  ['-c', '/r'],
  ['--continuous', '/r'],
  ['-ce', '/r'],
  ['-ec', '-i', 'id', '/r'],
  ['-cvX', '/r'],
  ['-cv', 'X', '/r'],
  ['-e', '-i', 'chat', '-v', 'ALIAS', '-c', '/r'],
  ['-v', 'A', '-v', 'B', '/r'],
  ['-c', '-c', '/r'],
  ['--', '/r'],
  ['-c', '--', '/r'],
  ['--', '-c'],
  ['--', '--'],
  ['--', '/r', 'extra'],
  ['/r', 'extra'],
  ['/r', '-c'],
  ['/r', '--'],
  ['-'],
  [''],
  ['-5'],
  ['-x', '/r'],
  ['-cx', '/r'],
  ['-c-', '/r'],
  ['--bogus', '/r'],
  ['--continuous=yes', '/r'],
  ['--=x', '/r'],
  ['---', '/r'],
  ['-v'],
  ['--var'],
  ['-i'],
  ['-h'],
  ['--help'],
  ['--version'],
  ['-c', '-h', '/r'],
];

const fp2aliasLines: string[][] = [
  [],
  ['-f', 'F'],
  ['--file', 'F'],
  ['--file=F'],
  ['-fF', 'cmd'],
  ['-f', 'F', 'cmd', '-x', '--y'],
  ['-f', 'F', '--', 'cmd', '-f', 'G'],
  ['-a', '-f', 'F', 'sh', '-c', 'echo "Hello, ${ALIAS}!"'],
  ['-ae', 'cmd', 'a'],
  ['-af', 'F', 'cmd'],
  ['-afF', 'cmd'],
  ['-f', '-a', 'cmd'],
  ['cmd'],
  ['cmd', '--', 'x'],
  ['--', '--'],
  ['--', '-a'],
  ['-a', '-a'],
  ['-f', 'A', '-f', 'B'],
  ['-'],
  ['-e', '-'],
  ['-5'],
  ['-x'],
  ['-f'],
  ['--file'],
  ['--add=x'],
  ['-h'],
  ['--version'],
];

for (const [spec, lines] of [
  [std2fifoSpec, std2fifoLines],
  [fp2aliasSpec, fp2aliasLines],
] as const) {
  t.test(`${spec.name}: the quick parser reads a line as commander does, or leaves it to commander`, async (t) => {
    let quick = 0;
    for (const argv of lines) {
      const fast = quickParse(spec, argv);
      if (fast === undefined) continue;
      quick++;
      t.same(fast, commanderParse(spec, argv), JSON.stringify(argv));
    }
    t.ok(quick >= lines.length / 3, `${quick} of ${lines.length} lines read without commander`);
  });
}

t.test('option names as commander makes them; negatable options left to commander', async (t) => {
  const spec: ProgramSpec = {
    name: 'demo',
    usage: '[option ...]',
    description: 'a made-up program',
    options: [
      { short: '-t', long: '--two-words', value: '<v>', description: 'two words' },
      { short: '-d', long: '--dash-2x', description: 'a digit after a dash' },
    ],
    operands: [],
  };
  const argv = ['-t', 'V', '-d'];
  t.same(quickParse(spec, argv), { options: { twoWords: 'V', dash2x: true }, operands: [] });
  t.same(quickParse(spec, argv), commanderParse(spec, argv));
  const negatable: ProgramSpec = { ...spec, options: [{ short: '-n', long: '--no-syslog', description: 'off' }] };
  t.equal(quickParse(negatable, ['-n']), undefined, '--no-x: commander reads it as x turned off');
});

t.test('the lines the docs and examples use take the quick path', async (t) => {
  const common: Array<[ProgramSpec, string[]]> = [
    [std2fifoSpec, ['/var/lib/tlsd/fifos']],
    [std2fifoSpec, ['-v', 'ALIAS', '/r']],
    [std2fifoSpec, ['-c', '-v', 'ALIAS', '/r']],
    [std2fifoSpec, ['-e', '-i', 'im', '/r']],
    [fp2aliasSpec, []],
    [fp2aliasSpec, ['-f', '/etc/tls/aliases']],
    [fp2aliasSpec, ['-a', '-f', 'aliases', '--', 'sh', '-c', 'echo "Hello, ${ALIAS}!"']],
    [fp2aliasSpec, ['-e', 'std2fifo', '-v', 'ALIAS', '/r']],
  ];
  for (const [spec, argv] of common) t.not(quickParse(spec, argv), undefined, `${spec.name} ${argv.join(' ')}`);
});

t.test('as installed, what the quick parser leaves to commander is still explained', async (t) => {
  const unknown = await runProgram('std2fifo', ['-x', '/r'], { file: installed.std2fifo, input: '' });
  t.equal(unknown.status, 1);
  t.equal(unknown.stderr, "error: unknown option '-x'\nUsage: std2fifo [option ...] [--] <dir>\nRun 'std2fifo -h' for the options.\n");
  const missing = await runProgram('fp2alias', ['-f'], { file: installed.fp2alias });
  t.equal(missing.status, 1);
  t.match(missing.stderr, /^error: option '-f, --file <file>' argument missing\nUsage: fp2alias /);
  const version = await runProgram('fp2alias', ['--version'], { file: installed.fp2alias });
  t.equal(version.status, 0);
  t.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
});
