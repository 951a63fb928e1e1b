// Every message tlsd's code can log is in the manual's "Log messages" section (docs/manual.md,
// 3.7), so that the table scripts are written against cannot drift from the program. The code is
// read with TypeScript's parser, from src/cli/tlsd.ts through everything it imports; each log call's
// message is turned into a pattern (its fixed text, anything in place of each `${…}`) that must
// match a line of the section. A message with no fixed text of its own must be one of the relays
// below, which say where its text is written; a relay that no longer exists fails too.
import { readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import t from 'tap';
import ts from 'typescript';
import { root } from './lib/tlsd.js';

/** A message as written: its fixed pieces, in order; between each two, whatever a `${…}` gives. */
type Template = string[];

interface Found {
  where: string;
  template: Template;
}

const levels = new Set(['error', 'warning', 'notice', 'info', 'debug', 'errorToStderr']);

/** The files tlsd runs: src/cli/tlsd.ts and what it imports, transitively (the logger itself aside). */
function tlsdSources(): Map<string, ts.SourceFile> {
  const files = new Map<string, ts.SourceFile>();
  const pending = [join(root, 'src/cli/tlsd.ts')];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (files.has(file)) continue;
    const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
    files.set(file, source);
    for (const statement of source.statements) {
      const specifier = (ts.isImportDeclaration(statement) || ts.isExportDeclaration(statement)) && statement.moduleSpecifier;
      if (specifier && ts.isStringLiteral(specifier) && specifier.text.startsWith('.')) pending.push(join(dirname(file), specifier.text.replace(/\.js$/, '.ts')));
    }
  }
  files.delete(join(root, 'src/log/logger.ts'));
  return files;
}

/** The messages an expression can be: a literal, a template, either branch of a `?:`; none when it is computed. */
function templates(node: ts.Expression): Template[] {
  if (ts.isParenthesizedExpression(node)) return templates(node.expression);
  if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return [[node.text]];
  if (ts.isTemplateExpression(node)) return [[node.head.text, ...node.templateSpans.map((span) => span.literal.text)]];
  if (ts.isConditionalExpression(node)) {
    const [a, b] = [templates(node.whenTrue), templates(node.whenFalse)];
    return a.length > 0 && b.length > 0 ? [...a, ...b] : [];
  }
  return [];
}

/** Every string and template literal under a node: the text a relay's source writes. */
function literalsUnder(node: ts.Node): Template[] {
  const found: Template[] = [];
  const visit = (child: ts.Node): void => {
    if (ts.isStringLiteral(child) || ts.isNoSubstitutionTemplateLiteral(child) || ts.isTemplateExpression(child)) found.push(...templates(child));
    ts.forEachChild(child, visit);
  };
  visit(node);
  return found;
}

function location(source: ts.SourceFile, node: ts.Node): string {
  return `${relative(root, source.fileName)}:${source.getLineAndCharacterOfPosition(node.getStart()).line + 1}`;
}

/** The log calls of one file: their message argument, and where they are. */
function logCalls(source: ts.SourceFile): Array<{ where: string; file: string; message: ts.Expression }> {
  const calls: Array<{ where: string; file: string; message: ts.Expression }> = [];
  const visit = (node: ts.Node): void => {
    if (ts.isCallExpression(node)) {
      const callee = node.expression;
      let message: ts.Expression | undefined;
      if (ts.isPropertyAccessExpression(callee) && /\blog$/.test(callee.expression.getText())) {
        const name = callee.name.text;
        if (levels.has(name)) message = node.arguments[0];
        else if (name === 'announce') message = node.arguments[1];
      } else if (ts.isIdentifier(callee) && callee.text === 'fail') message = node.arguments[1];
      if (message) calls.push({ where: location(source, node), file: relative(root, source.fileName), message });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return calls;
}

/** A function (or method) named `name` in a file: where a relay's text is written. */
function declaration(sources: Map<string, ts.SourceFile>, file: string, name: string): ts.Node {
  const source = sources.get(join(root, file));
  let found: ts.Node | undefined;
  const visit = (node: ts.Node): void => {
    if ((ts.isFunctionDeclaration(node) || ts.isMethodDeclaration(node)) && node.name?.getText() === name) found = node;
    ts.forEachChild(node, visit);
  };
  if (source) visit(source);
  if (!found) throw new Error(`${file} has no function ${name}`);
  return found;
}

/** What a `const name = …` in a file is set to. */
function initializer(sources: Map<string, ts.SourceFile>, file: string, name: string): ts.Node {
  const source = sources.get(join(root, file));
  let found: ts.Node | undefined;
  const visit = (node: ts.Node): void => {
    if (ts.isVariableDeclaration(node) && node.name.getText() === name && node.initializer) found = node.initializer;
    ts.forEachChild(node, visit);
  };
  if (source) visit(source);
  if (!found) throw new Error(`${file} sets no ${name}`);
  return found;
}

/**
 * The messages given as one argument of calls or constructions anywhere in tlsd's files (to
 * BurstLog, to a note): the argument itself, or what a function given there returns.
 */
function argumentsOf(sources: Map<string, ts.SourceFile>, match: (node: ts.Node) => ts.Expression | undefined): Template[] {
  const found: Template[] = [];
  for (const source of sources.values()) {
    const visit = (node: ts.Node): void => {
      const argument = match(node);
      if (argument) found.push(...templates(ts.isArrowFunction(argument) && !ts.isBlock(argument.body) ? argument.body : argument));
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return found;
}

/** The values given to a property `name` in object literals within a node (a verdict's `refused`). */
function propertyValues(node: ts.Node, name: string): Template[] {
  const found: Template[] = [];
  const visit = (child: ts.Node): void => {
    if (ts.isPropertyAssignment(child) && child.name.getText() === name) found.push(...templates(child.initializer));
    ts.forEachChild(child, visit);
  };
  visit(node);
  return found;
}

/**
 * Log calls whose message is computed elsewhere, by `file: message expression`, and how to find the
 * text that can reach them. Each must still exist.
 */
const relays: Record<string, (sources: Map<string, ts.SourceFile>) => Template[]> = {
  // BurstLog logs a line given to report(), then summaries its owner writes. Refusals are such
  // lines: their reasons, the daemon's and the listener's, are logged too.
  'src/log/burst-log.ts: line': (sources) => [
    ...argumentsOf(sources, (node) => (ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression) && node.expression.name.text === 'report' ? node.arguments[0] : undefined)),
    ...literalsUnder(declaration(sources, 'src/core/daemon.ts', 'refusal')),
    ...literalsUnder(initializer(sources, 'src/core/listener.ts', 'refusal')),
    ...literalsUnder(declaration(sources, 'src/workers/primary.ts', 'handOff')).filter((template) => template.join('').includes(' ')), // not its message fields
    ...literalsUnder(declaration(sources, 'src/core/listener.ts', 'descriptorShortage')).filter((template) => template.join('').includes(' ')), // not its file names and codes
    ['too many handshakes in progress (', ')'],
  ],
  'src/log/burst-log.ts: this.summary(this.more, Math.round(this.intervalMs / 1000), this.lastDetail)': (sources) =>
    argumentsOf(sources, (node) => (ts.isNewExpression(node) && node.expression.getText() === 'BurstLog' ? node.arguments?.[2] : undefined)),
  // A connection that ended before its PROXY header or TLS: proxy-preamble.ts says how.
  'src/core/listener.ts: `${remote}: ${preamble.gone}`': (sources) => propertyValues(declaration(sources, 'src/input/proxy-preamble.ts', 'readPreamble'), 'gone'),
  // Warnings identity.ts words, where the key file's mode and the files' readability are known.
  'src/core/daemon.ts: identity.exposure': (sources) => literalsUnder(declaration(sources, 'src/core/identity.ts', 'exposure')),
  'src/core/daemon.ts: warning': (sources) => literalsUnder(declaration(sources, 'src/core/identity.ts', 'reloadWarnings')),
  // What peer-names.ts notes about a server name or a subject it will not pass on.
  'src/core/peer-service.ts: `${remote}: ${problem}`': (sources) =>
    argumentsOf(sources, (node) => (ts.isCallExpression(node) && node.expression.getText() === 'note' ? node.arguments[0] : undefined)),
  // SIGUSR1's table: its first line and a row per peer, in one process or (after `worker N: `) from each worker.
  'src/core/daemon.ts: line': (sources) => [...statusHeaders(sources), ...statusRows(sources)],
  'src/workers/primary.ts: statusHeader(rows.length, this.listener.pendingHandshakes)': statusHeaders,
  'src/workers/primary.ts: row': (sources) => [['worker ', ': '], ...statusRows(sources)],
  // A failed start: the one-line reasons written as whole lines (they start with a capital).
  'src/cli/tlsd.ts: reason(error)': wholeLineErrors,
  // A worker that could not be started again: the same whole-line reasons.
  'src/workers/primary.ts: reason(error)': wholeLineErrors,
  // fail() itself, and exitWhenDone's, which only the helpers use.
  'src/cli/lifecycle.ts: message': () => [],
  'src/cli/lifecycle.ts: describe(error)': () => [],
};

/** Start-up failures written as whole lines (they start with a capital): the messages of such errors. */
function wholeLineErrors(sources: Map<string, ts.SourceFile>): Template[] {
  return argumentsOf(sources, (node) => (ts.isNewExpression(node) && /^(Identity)?Error$/.test(node.expression.getText()) && /^`?[A-Z]/.test(node.arguments?.[0]?.getText() ?? '') ? node.arguments![0] : undefined));
}

function statusHeaders(sources: Map<string, ts.SourceFile>): Template[] {
  return literalsUnder(declaration(sources, 'src/core/daemon.ts', 'statusHeader'));
}

function statusRows(sources: Map<string, ts.SourceFile>): Template[] {
  return literalsUnder(declaration(sources, 'src/core/peer-service.ts', 'statusRows'));
}

/**
 * The `${…}` of a log call that stand for text written elsewhere (refusals, notes), by `file:
 * expression`: their text is checked as well.
 */
const parts: Record<string, (sources: Map<string, ts.SourceFile>) => Template[]> = {
  'src/core/peer-service.ts: verdict.refused': (sources) => propertyValues(declaration(sources, 'src/core/peer-check.ts', 'checkPeer'), 'refused'),
};

/** The expressions in a message's `${…}`, all branches. */
function spansOf(node: ts.Expression): ts.Expression[] {
  if (ts.isParenthesizedExpression(node)) return spansOf(node.expression);
  if (ts.isTemplateExpression(node)) return node.templateSpans.map((span) => span.expression);
  if (ts.isConditionalExpression(node)) return [...spansOf(node.whenTrue), ...spansOf(node.whenFalse)];
  return [];
}

/** The "Log messages" section of the manual. */
function section(): string {
  const manual = readFileSync(join(root, 'docs/manual.md'), 'utf8');
  return manual.split(/^(?=### )/m).find((part) => /^### [\d.]* ?Log messages$/m.test(part.split('\n', 1)[0]!)) ?? '';
}

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A template as a pattern for one line of the section: its fixed pieces in order, anything between. */
function pattern(template: Template): RegExp {
  return new RegExp(template.map(escape).join('.*?'));
}

const hasWords = (template: Template): boolean => template.some((piece) => /[A-Za-z]{2}/.test(piece));

const sources = tlsdSources();
const found: Found[] = [];
const unknown: string[] = [];
const relaysUsed = new Set<string>();
const partsUsed = new Set<string>();
for (const source of sources.values()) {
  for (const call of logCalls(source)) {
    const written = templates(call.message).filter(hasWords);
    if (written.length > 0) {
      for (const template of written) found.push({ where: call.where, template });
      // Text written inside a `${…}` (a default, a branch) is logged too.
      for (const span of spansOf(call.message)) {
        for (const template of literalsUnder(span).filter(hasWords)) found.push({ where: `${call.where} (within)`, template });
        const part = parts[`${call.file}: ${span.getText()}`];
        if (part) {
          partsUsed.add(`${call.file}: ${span.getText()}`);
          for (const template of part(sources).filter(hasWords)) found.push({ where: `${call.where} (${span.getText()})`, template });
        }
      }
      continue;
    }
    const key = `${call.file}: ${call.message.getText()}`;
    const relay = relays[key];
    if (!relay) {
      unknown.push(`${call.where}: ${call.message.getText()}`);
      continue;
    }
    relaysUsed.add(key);
    for (const template of relay(sources).filter(hasWords)) found.push({ where: `${call.where} (via ${key})`, template });
  }
}

t.test("every message tlsd can log is in the manual's Log messages section", async (t) => {
  const text = section();
  t.ok(text.length > 0, 'docs/manual.md has a "Log messages" section');
  t.ok(found.length > 60, `the code was read: ${found.length} messages from ${sources.size} files`);
  t.same(unknown, [], 'every log call has text of its own, or is a relay this test knows');
  t.same(
    Object.keys(relays).filter((key) => !relaysUsed.has(key)),
    [],
    'every relay this test knows is still a log call',
  );
  t.same(
    Object.keys(parts).filter((key) => !partsUsed.has(key)),
    [],
    'every part this test knows is still in a log call',
  );
  const lines = text.split('\n');
  for (const { where, template } of found) {
    const wanted = pattern(template);
    t.ok(
      lines.some((line) => wanted.test(line)),
      `${where}: ${JSON.stringify(template.join('…'))} is documented`,
    );
  }
});

t.test("the section gives the original's line for each event the original logged", async (t) => {
  const text = section();
  // The original's lines, from its source, that the issue and its users name.
  const original = [
    'Initializing',
    'Attempting to bind: %s, port %s',
    'Listening on %s, port %s',
    'Accepted a TCP connection from %s, port %s',
    "Peer's fingerprint: %s",
    'Connecting to %s, port %s',
    'Connected to %s, port %s',
    'TLS handshake has failed: %s (err=%d)',
    'Peer certificate is required',
    'Failed to execute %s: %s (errno=%d)',
    'Waiting for process %d to exit',
    'Process %d has exited with status %d',
    'Process %d was terminated by signal %d',
    'Received signal %d',
    'Reloading key and certificate',
    'Failed to load key or certificate: %s (err=%d)',
    'Terminating gracefully',
    'stdin is closed',
    'Failed to scan host and port from stdin',
    'Shutting down',
  ];
  for (const line of original) t.ok(text.includes(`\`${line}\``), `the original's \`${line}\` is in the table`);
});
