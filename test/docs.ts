import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import t from 'tap';
import { root } from './lib/tlsd.js';

// Docs move with code: every option a program's --help prints appears in its man page and in
// the README, so that neither can drift from the program.
const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { bin: Record<string, string>; man: string[] };
const readme = readFileSync(`${root}README.md`, 'utf8');

function helpOptions(program: string): string[] {
  const help = execFileSync(process.execPath, [`${root}${pkg.bin[program]}`, '-h'], { encoding: 'utf8' });
  const flags = new Set<string>();
  for (const line of help.split('\n')) {
    const match = line.match(/^ {2}((?:-{1,2}[a-z][a-z0-9-]*(?:, )?)+)/);
    for (const flag of match?.[1]?.split(', ') ?? []) flags.add(flag);
  }
  return [...flags];
}

for (const program of Object.keys(pkg.bin)) {
  t.test(`${program}: --help, man page and README agree`, async (t) => {
    const options = helpOptions(program);
    t.ok(options.length >= 4, `${program} -h lists its options (${options.join(' ')})`);
    const manFile = pkg.man.find((file) => file.endsWith(`/${program}.1`));
    t.ok(manFile, `package.json installs a man page for ${program}`);
    const man = readFileSync(`${root}${manFile}`, 'utf8').replace(/\\-/g, '-').replace(/\\f[BIRP]/g, '');
    for (const option of options) {
      t.match(man, new RegExp(`(^|[^a-z-])${option}([^a-z-]|$)`, 'm'), `${manFile} documents ${option}`);
      t.match(readme, new RegExp(`(^|[^a-z-])${option}([^a-z-]|$)`, 'm'), `README documents ${program} ${option}`);
    }
  });
}
