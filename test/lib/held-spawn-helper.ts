// A stand-in for tlsd's spawn helper that forces an order of events on tlsd (TLSD_SPAWNER names
// its build, see held-helper-build.ts). It runs the real helper (HELD_REAL_HELPER) and relays
// everything between it and tlsd unchanged: the requests, the reports, and each child's two stdio
// connections, which the real helper makes to this program's own socket and which are relayed to
// tlsd's. Only the "P id pid" report of each child (and the reports after it of that child) is held
// back, until HELD_UNTIL says:
//   stdin-closed  tlsd has closed its end of the child's stdin connection (it read the child's
//                 end of file there before it knew the child's pid);
//   file:PATH     PATH exists (the test creates it when the moment has come).
// Who can reach it: it is tlsd's child; its socket, like tlsd's, is in the abstract namespace of
// the test machine, under a random name, for the time of one test.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

const HEADER_BYTES = 34; // as in src/daemon/spawn-helper.ts: token, `i` or `o`, newline
const POLL_MS = 20;

const tlsdName = process.argv[2]!;
const real = process.env.HELD_REAL_HELPER!;
const until = process.env.HELD_UNTIL ?? '';
const file = until.startsWith('file:') ? until.slice('file:'.length) : undefined;
if (!real || (until !== 'stdin-closed' && !file)) {
  process.stderr.write('held-spawn-helper: HELD_REAL_HELPER and HELD_UNTIL (stdin-closed or file:PATH) are needed\n');
  process.exit(2);
}

const ownName = `tlsd-held-${process.pid}-${randomBytes(8).toString('hex')}`;
const server = createServer({ allowHalfOpen: true }, relay);
server.listen(`\0${ownName}`, () => {
  const helper = spawn(real, [ownName], { stdio: ['pipe', 'pipe', 'inherit'] });
  helper.on('exit', (code) => process.exit(code ?? 1));
  helper.stdin.on('error', () => {});
  process.stdin.on('data', (chunk: Buffer) => {
    helper.stdin.write(chunk);
    readRequests(chunk);
  });
  process.stdin.on('end', () => helper.stdin.end());
  createInterface({ input: helper.stdout }).on('line', report);
});

/** Child id by token, from tlsd's `S id token argc envc bytes` requests (then `bytes` of body). */
const idOfToken = new Map<string, string>();
let requests = Buffer.alloc(0);
function readRequests(chunk: Buffer): void {
  requests = Buffer.concat([requests, chunk]);
  for (;;) {
    const newline = requests.indexOf(10);
    if (newline < 0) return;
    const fields = requests.subarray(0, newline).toString('latin1').split(' ');
    const body = fields[0] === 'S' ? Number(fields[5]) : 0;
    if (requests.length < newline + 1 + body) return;
    if (fields[0] === 'S') idOfToken.set(fields[2]!, fields[1]!);
    requests = requests.subarray(newline + 1 + body);
  }
}

/** Reports held back, by child id, its `P` first; and ids released before their `P` came. */
const held = new Map<string, string[]>();
const released = new Set<string>();
let poll: NodeJS.Timeout | undefined;

function report(line: string): void {
  const [kind, id] = line.split(' ') as [string, string];
  if (kind === 'P' && !released.delete(id)) {
    held.set(id, [line]);
    if (file) poll ??= setInterval(checkFile, POLL_MS);
  } else if (held.has(id)) held.get(id)!.push(line);
  else process.stdout.write(`${line}\n`);
}

function release(id: string | undefined): void {
  if (id === undefined) return;
  const lines = held.get(id);
  if (!lines) {
    released.add(id);
    return;
  }
  held.delete(id);
  process.stdout.write(lines.map((line) => `${line}\n`).join(''));
}

function checkFile(): void {
  if (!existsSync(file!)) return;
  for (const id of [...held.keys()]) release(id);
  clearInterval(poll);
  poll = undefined;
}

/** One stdio connection of a child (or the helper's probe), relayed to tlsd's socket as it is. */
function relay(inner: Socket): void {
  let header = Buffer.alloc(0);
  let outer: Socket | undefined;
  // Half-closes pass through the pipes below; an error ends both ends, as it would the one socket.
  const broken = (): void => {
    inner.destroy();
    outer?.destroy();
  };
  inner.on('error', broken);
  const onData = (chunk: Buffer): void => {
    header = Buffer.concat([header, chunk]);
    if (header.length < HEADER_BYTES) return;
    inner.off('data', onData);
    inner.pause();
    const token = header.subarray(0, 32).toString('latin1');
    const which = String.fromCharCode(header[32]!);
    outer = connect({ path: `\0${tlsdName}`, allowHalfOpen: true });
    outer.on('error', broken);
    outer.write(header);
    inner.pipe(outer);
    outer.pipe(inner);
    // tlsd ends its side of a stdin connection only once it has read the end of the child's.
    if (which === 'i' && until === 'stdin-closed') outer.once('end', () => release(idOfToken.get(token)));
  };
  inner.on('data', onData);
}
