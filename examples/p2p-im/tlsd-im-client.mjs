#!/usr/bin/env node
// @ts-check
/**
 * tlsd-im-client: a terminal client for the peer-to-peer IM example (in place of the original's
 * libpurple plugin). It talks only to the files tlsd-im.sh keeps in the IM directory:
 *
 *   <dir>/<fingerprint>/out   what the peer sends (std2fifo opens it for each message)
 *   <dir>/<fingerprint>/in    what we write here goes to the peer while it is connected
 *   <dir>/<fingerprint>/address, <dir>/connect   see tlsd-im-reconnect.sh
 *
 * Usage: tlsd-im-client.mjs [-a ALIASES] [DIR]     (DIR: $TLSD_IM_DIR or /var/lib/tlsd-im)
 * Type /help for the commands.
 *
 * Why plain JavaScript: it runs as it is on Node 20 (which cannot run TypeScript without a build
 * step, and the package build compiles only src/), from the examples folder of the installed
 * package or of a built checkout. The types are JSDoc, checked by TypeScript through
 * `// @ts-check`: `npx tsc -p examples/p2p-im`.
 *
 * FIFOs are opened with O_NONBLOCK and handed to net.Socket, as std2fifo does: a blocking open
 * would park one of libuv's few worker threads per FIFO until the other side came.
 */
import { closeSync, constants, lstatSync, openSync, readdirSync, readFileSync, statSync, watch, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

/**
 * tlsd's own rules for fingerprints and alias files, from the package this example ships in: an
 * alias file means here what it means to tlsd --aliases and fp2alias (a duplicate alias is refused).
 * @type {Pick<typeof import('../../src/peer/fingerprint.js'), 'isFingerprint'> & Pick<typeof import('../../src/peer/alias-file.js'), 'parseAliases'>}
 */
const { isFingerprint, parseAliases } = await import(new URL('../../dist/peer.cjs', import.meta.url).href).catch(() => {
  process.stderr.write('tlsd-im-client: tlsd is not built here (no dist/peer.cjs): run npm run build in the package\n');
  process.exit(1);
});
/** How often the directory is scanned again, in case fs.watch misses a new peer or FIFO. */
const RESCAN_MS = 1000;
/** A message that does not end in a newline is shown after this long without more text. */
const PARTIAL_LINE_MS = 300;
/** How long a send waits for the session's std2fifo to be there before giving up. */
const SEND_OPEN_MS = 1000;
/** A longer run of text without a newline is shown in pieces: a peer cannot fill our memory. */
const MAX_LINE = 64 * 1024;
/** On /quit, how long sends still under way may take. */
const QUIT_MS = 5000;

const HELP = `Commands:
  /peers                     list the peers: number, alias, fingerprint, connected or not, address
  /to PEER                   send the lines you type from now on to PEER
  /msg PEER TEXT             send one line to PEER
  /connect HOST PORT [FP]    dial a peer (pinned to the fingerprint FP when given)
  /help                      this help
  /quit                      leave (also end of input)
  TEXT                       send TEXT to the current peer; start it with // to send a leading /
PEER is a number from /peers, an alias, or the start of a fingerprint (4 hex digits or more).`;

/**
 * @typedef {object} Peer
 * @property {string} fingerprint
 * @property {number} number  in the order peers were found, so that numbers never change
 * @property {Socket | undefined} reader  the open reader of `out`, if any
 * @property {StringDecoder} decoder  UTF-8 split across chunks stays whole
 * @property {string} partial  the text after the last newline received
 * @property {NodeJS.Timeout | undefined} partialTimer
 * @property {Promise<void>} sending  the chain of this peer's sends, which keeps them in order
 */

/**
 * @typedef {object} Options
 * @property {string} dir
 * @property {string | undefined} aliasesFile
 */

/** @returns {Options} */
function parseOptions() {
  try {
    const { values, positionals } = parseArgs({
      options: { aliases: { type: 'string', short: 'a' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
    });
    if (values.help) {
      process.stdout.write(`Usage: tlsd-im-client.mjs [-a ALIASES] [DIR]\n${HELP}\n`);
      process.exit(0);
    }
    if (positionals.length > 1) throw new Error('expected at most one directory');
    return { dir: positionals[0] ?? process.env.TLSD_IM_DIR ?? '/var/lib/tlsd-im', aliasesFile: values.aliases };
  } catch (error) {
    process.stderr.write(`tlsd-im-client: ${errorText(error)}\nUsage: tlsd-im-client.mjs [-a ALIASES] [DIR]\n`);
    process.exit(2);
  }
}

/** @param {unknown} error */
function errorText(error) {
  return error instanceof Error ? error.message : String(error);
}

/** @param {unknown} error */
function errorCode(error) {
  return /** @type {NodeJS.ErrnoException} */ (error).code;
}

/**
 * Peers choose what they send: control characters could drive the terminal (move the cursor,
 * rewrite the screen, set the title) and bidirectional overrides could make a line read as
 * something else, so they are shown as U+FFFD.
 * @param {string} text
 */
function printable(text) {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, '\ufffd');
}

/**
 * `<fingerprint> <alias>` lines, as fp2alias and tlsd --aliases read them. Read again whenever the
 * file changes, so an alias added while we run is used at once.
 */
class Aliases {
  /**
   * @param {string | undefined} file
   * @param {(line: string) => void} report  told of each line skipped, as tlsd logs it
   */
  constructor(file, report) {
    this.file = file;
    this.report = report;
    this.table = parseAliases('');
    this.stamp = '';
  }

  /** @param {string} fingerprint */
  of(fingerprint) {
    this.refresh();
    return this.table.byFingerprint.get(fingerprint);
  }

  /** @param {string} alias */
  fingerprintOf(alias) {
    this.refresh();
    return this.table.byAlias.get(alias);
  }

  refresh() {
    if (this.file === undefined) return;
    let stamp = 'missing';
    try {
      const stat = statSync(this.file);
      stamp = `${stat.mtimeMs} ${stat.size} ${stat.ino}`;
    } catch {
      // a missing file has no aliases yet
    }
    if (stamp === this.stamp) return;
    this.stamp = stamp;
    let text = '';
    try {
      text = readFileSync(this.file, 'utf8');
    } catch {
      // a missing file has no aliases yet
    }
    this.table = parseAliases(text);
    for (const problem of this.table.problems) this.report(`! ${this.file}, line ${problem.line}: ${problem.message}; line skipped`);
  }
}

class Client {
  /** @param {Options} options */
  constructor(options) {
    this.dir = options.dir;
    this.aliases = new Aliases(options.aliasesFile, (line) => this.sayOnce(line));
    /** @type {Map<string, Peer>} */
    this.peers = new Map();
    /** @type {Peer | undefined} */
    this.current = undefined;
    /** Problems met while scanning, each said once rather than every second. */
    /** @type {Set<string>} */
    this.reported = new Set();
    /** Commands run one after another, in the order typed. */
    this.commands = Promise.resolve();
    this.interactive = process.stdin.isTTY === true && process.stdout.isTTY === true;
    this.input = createInterface({ input: process.stdin, output: process.stdout, terminal: this.interactive });
  }

  start() {
    try {
      if (!statSync(this.dir).isDirectory()) throw new Error('not a directory');
    } catch (error) {
      process.stderr.write(`tlsd-im-client: ${this.dir}: ${errorText(error)}\n`);
      process.exit(1);
    }
    this.scan(false);
    this.say(`* ${this.peers.size} peer${this.peers.size === 1 ? '' : 's'} in ${this.dir}; /help for the commands`);
    if (this.peers.size > 0) this.listPeers();
    try {
      watch(this.dir, () => this.scan(true)).on('error', () => {});
    } catch {
      // polling alone will do
    }
    setInterval(() => this.scan(true), RESCAN_MS);
    this.input.on('line', (line) => {
      this.commands = this.commands.then(() => this.command(line)).catch((error) => this.say(`! ${errorText(error)}`));
    });
    this.input.on('close', () => void this.commands.then(() => this.quit()));
    // On a terminal readline takes Ctrl-C; without this it would only pause the input.
    this.input.on('SIGINT', () => void this.quit());
    this.prompt();
  }

  /** @param {boolean} announce  say so for each new peer (not on the first scan) */
  scan(announce) {
    /** @type {string[]} */
    let names;
    try {
      names = readdirSync(this.dir);
    } catch (error) {
      this.sayOnce(`! cannot read ${this.dir}: ${errorText(error)}`);
      return;
    }
    // Directory names are only trusted once they look like fingerprints: nothing else is a peer,
    // and a fingerprint cannot name a path outside the directory.
    for (const fingerprint of names.filter((name) => isFingerprint(name)).sort()) {
      let peer = this.peers.get(fingerprint);
      if (!peer) {
        if (!isRealDirectory(join(this.dir, fingerprint))) continue;
        peer = { fingerprint, number: this.peers.size + 1, reader: undefined, decoder: new StringDecoder('utf8'), partial: '', partialTimer: undefined, sending: Promise.resolve() };
        this.peers.set(fingerprint, peer);
        if (announce) this.say(`* new peer ${peer.number}: ${this.describe(peer)}`);
      }
      if (!peer.reader) this.listen(peer);
    }
  }

  /**
   * Keeps a reader on the peer's `out`. Each message std2fifo delivers ends with our end of
   * file; the next reader is opened before the old one is dropped, so `out` never lacks a reader
   * and a message written meanwhile stays in the pipe for the new one.
   * @param {Peer} peer
   */
  listen(peer) {
    const path = join(this.dir, peer.fingerprint, 'out');
    if (!isFifo(path)) return; // std2fifo makes it when the peer first connects
    let reader;
    try {
      reader = new Socket({ fd: openSync(path, constants.O_RDONLY | constants.O_NONBLOCK), readable: true, writable: false });
    } catch (error) {
      this.sayOnce(`! cannot read ${path}: ${errorText(error)}`);
      return;
    }
    peer.reader = reader;
    reader.on('data', (chunk) => this.received(peer, peer.decoder.write(/** @type {Buffer} */ (chunk))));
    reader.once('end', () => {
      peer.reader = undefined;
      this.listen(peer);
      reader.destroy();
      this.messageEnded(peer);
    });
    reader.once('error', (error) => {
      this.say(`! ${path}: ${errorText(error)}`);
      reader.destroy();
      if (peer.reader === reader) peer.reader = undefined; // the next scan tries again
    });
  }

  /**
   * @param {Peer} peer
   * @param {string} text
   */
  received(peer, text) {
    const lines = (peer.partial + text).split('\n');
    peer.partial = lines.pop() ?? '';
    clearTimeout(peer.partialTimer);
    for (const line of lines) this.show(peer, line);
    for (; peer.partial.length > MAX_LINE; peer.partial = peer.partial.slice(MAX_LINE)) this.show(peer, peer.partial.slice(0, MAX_LINE));
  }

  /**
   * A message may end without a newline; it is shown once no more text follows it shortly, since
   * one sent line can also reach us as two messages.
   * @param {Peer} peer
   */
  messageEnded(peer) {
    if (peer.partial === '') return;
    clearTimeout(peer.partialTimer);
    peer.partialTimer = setTimeout(() => {
      const line = peer.partial;
      peer.partial = '';
      this.show(peer, line);
    }, PARTIAL_LINE_MS);
  }

  /**
   * @param {Peer} peer
   * @param {string} line
   */
  show(peer, line) {
    this.say(`[${this.label(peer)}] ${printable(line.replace(/\r$/, ''))}`);
  }

  /** @param {string} line */
  async command(line) {
    if (line.startsWith('//')) return this.sendToCurrent(line.slice(1));
    if (!line.startsWith('/')) return line === '' ? undefined : this.sendToCurrent(line);
    const [name = '', ...words] = line.slice(1).trim().split(/\s+/);
    switch (name) {
      case 'peers':
      case 'list':
        this.scan(true);
        return this.listPeers();
      case 'to': {
        const peer = this.find(words.join(' '));
        if (!peer) return;
        this.current = peer;
        this.say(`* talking to ${this.label(peer)}`);
        return this.prompt();
      }
      case 'msg': {
        const match = /^\/msg\s+(\S+)\s(.*)$/.exec(line);
        if (!match) return this.say('! usage: /msg PEER TEXT');
        const peer = this.find(/** @type {string} */ (match[1]));
        if (peer) this.send(peer, /** @type {string} */ (match[2]));
        return;
      }
      case 'connect':
        return this.dial(words);
      case 'help':
        return this.say(HELP);
      case 'quit':
        return this.quit();
      default:
        return this.say(`! unknown command /${name}; /help lists them`);
    }
  }

  /** @param {string} text */
  sendToCurrent(text) {
    if (!this.current) return this.say('! choose a peer first: /to PEER (see /peers)');
    this.send(this.current, text);
  }

  /**
   * Queues one line for the peer: sends to different peers do not wait for each other, and a
   * peer's lines go out in order.
   * @param {Peer} peer
   * @param {string} text
   */
  send(peer, text) {
    peer.sending = peer.sending.then(() => this.deliver(peer, text)).catch((error) => this.say(`! ${this.label(peer)}: not sent (${errorText(error)}): ${printable(text)}`));
  }

  /**
   * Opens `in` for this one message and closes it after, as `echo TEXT > in` does: std2fifo
   * reads it while the peer's session lasts. No reader means no session: the peer is offline.
   * @param {Peer} peer
   * @param {string} text
   */
  async deliver(peer, text) {
    const path = join(this.dir, peer.fingerprint, 'in');
    const writer = await openWriter(path, SEND_OPEN_MS);
    if (!writer) return this.say(`! ${this.label(peer)} is not connected; not sent: ${printable(text)}`);
    await new Promise((resolve) => {
      writer.once('error', (error) => {
        this.say(`! ${this.label(peer)}: not sent (${errorText(error)}): ${printable(text)}`);
        resolve(undefined);
      });
      writer.end(`${text}\n`, () => resolve(undefined));
    });
    writer.destroy();
  }

  /** @param {string[]} words */
  dial(words) {
    const [host, port, pin] = words;
    if (words.length < 2 || words.length > 3 || !host || !/^[A-Za-z0-9.:_-]+$/.test(host) || !port || !/^\d{1,5}$/.test(port) || (pin !== undefined && !isFingerprint(pin))) {
      return this.say('! usage: /connect HOST PORT [FINGERPRINT]');
    }
    const path = join(this.dir, 'connect');
    try {
      // tlsd-im.sh keeps the FIFO open, so this open fails only when the daemon is not running.
      const fd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
      try {
        if (!writeFully(fd, `${words.join(' ')}\n`)) throw new Error('the FIFO is full: the daemon is not reading it');
      } finally {
        closeSync(fd);
      }
      this.say(`* dialing ${host} ${port}`);
    } catch (error) {
      this.say(`! cannot write to ${path}: ${errorCode(error) === 'ENXIO' ? 'is tlsd-im.sh running?' : errorText(error)}`);
    }
  }

  listPeers() {
    if (this.peers.size === 0) return this.say('* no peers yet');
    for (const peer of this.peers.values()) {
      const alias = this.aliases.of(peer.fingerprint) ?? '-';
      const state = isConnected(join(this.dir, peer.fingerprint, 'in')) ? 'connected' : 'offline';
      const address = readAddress(join(this.dir, peer.fingerprint, 'address'));
      this.say(`${String(peer.number).padStart(3)}  ${printable(alias).padEnd(12)} ${peer.fingerprint}  ${state.padEnd(9)}  ${address}`.trimEnd());
    }
  }

  /**
   * A number from /peers, an alias, or a unique fingerprint prefix.
   * @param {string} word
   * @returns {Peer | undefined}
   */
  find(word) {
    this.scan(true);
    const peers = [...this.peers.values()];
    /** @type {Peer[]} */
    let found = [];
    if (/^\d+$/.test(word) && word.length < 4) found = peers.filter((peer) => peer.number === Number(word));
    if (found.length === 0) {
      const fingerprint = this.aliases.fingerprintOf(word);
      found = peers.filter((peer) => peer.fingerprint === fingerprint);
    }
    if (found.length === 0 && /^[0-9a-f]{4,64}$/.test(word)) found = peers.filter((peer) => peer.fingerprint.startsWith(word));
    if (found.length === 1) return found[0];
    this.say(found.length === 0 ? `! no peer ${printable(word)}; /peers lists them` : `! ${printable(word)} matches ${found.length} peers; give more of the fingerprint`);
    return undefined;
  }

  /** @param {Peer} peer */
  label(peer) {
    return printable(this.aliases.of(peer.fingerprint) ?? peer.fingerprint.slice(0, 12));
  }

  /** @param {Peer} peer */
  describe(peer) {
    const alias = this.aliases.of(peer.fingerprint);
    return alias === undefined ? peer.fingerprint : `${printable(alias)} (${peer.fingerprint})`;
  }

  /**
   * One line of output. On a terminal it goes above the line being typed, which is redrawn.
   * @param {string} line
   */
  say(line) {
    if (this.interactive) {
      process.stdout.write(`\r\u001b[2K${line}\n`);
      this.input.prompt(true);
    } else {
      process.stdout.write(`${line}\n`);
    }
  }

  /** @param {string} line */
  sayOnce(line) {
    if (this.reported.has(line)) return;
    this.reported.add(line);
    this.say(line);
  }

  prompt() {
    if (!this.interactive) return;
    this.input.setPrompt(this.current ? `${this.label(this.current)}> ` : '> ');
    this.input.prompt(true);
  }

  async quit() {
    const sends = Promise.all([...this.peers.values()].map((peer) => peer.sending));
    await Promise.race([sends, sleep(QUIT_MS)]);
    process.exit(0);
  }
}

/** @param {string} path */
function isRealDirectory(path) {
  try {
    return lstatSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** @param {string} path */
function isFifo(path) {
  try {
    return lstatSync(path).isFIFO();
  } catch {
    return false;
  }
}

/**
 * Opens a FIFO for writing once it has a reader, trying for up to `ms`; undefined if it never has.
 * Without a reader O_NONBLOCK fails with ENXIO rather than waiting.
 * @param {string} path
 * @param {number} ms
 * @returns {Promise<Socket | undefined>}
 */
async function openWriter(path, ms) {
  const deadline = Date.now() + ms;
  for (let delay = 10; ; delay = Math.min(delay * 2, 200)) {
    try {
      return new Socket({ fd: openSync(path, constants.O_WRONLY | constants.O_NONBLOCK), readable: false, writable: true });
    } catch (error) {
      if (errorCode(error) !== 'ENXIO' && errorCode(error) !== 'ENOENT') throw error;
    }
    if (Date.now() >= deadline) return undefined;
    await sleep(delay);
  }
}

/**
 * Whether the peer has a session now: its std2fifo is the only reader of `in`. Opening and closing
 * it without writing costs std2fifo nothing but reopening `in`.
 * @param {string} path
 */
function isConnected(path) {
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
    return true;
  } catch {
    return false;
  }
}

/**
 * A dial line is far below PIPE_BUF, so one write puts it in the FIFO whole or not at all.
 * @param {number} fd
 * @param {string} text
 */
function writeFully(fd, text) {
  const data = Buffer.from(text);
  try {
    return writeSync(fd, data) === data.length;
  } catch (error) {
    if (errorCode(error) === 'EAGAIN') return false;
    throw error;
  }
}

/** @param {string} path */
function readAddress(path) {
  try {
    return printable(readFileSync(path, 'utf8').split('\n')[0]?.trim() ?? '');
  } catch {
    return '';
  }
}

new Client(parseOptions()).start();
