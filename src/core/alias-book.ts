import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { logProblems, parseAliases } from '../peer/alias-file.js';
import type { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';

/** Editors and `mv` replace a file in a few steps; one reload after they settle is enough. */
const SETTLE_MS = 200;

/**
 * --aliases: the fp2alias file, kept in memory. Only peers listed in it are served, and their
 * alias is set in the child's environment. The file is read again on SIGHUP and whenever it
 * changes; a read that fails keeps the aliases already known, so a bad edit locks nobody out.
 */
export class AliasBook {
  private aliases: Map<string, string>;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    readonly file: string,
    private readonly log: Logger,
    aliases: Map<string, string>,
  ) {
    this.aliases = aliases;
  }

  /** Reads the file for the first time; a missing or unreadable file is a start-up error. */
  static open(file: string, log: Logger): AliasBook {
    let aliases: Map<string, string>;
    try {
      aliases = AliasBook.read(file, log);
    } catch (error) {
      throw new Error(`Cannot read the aliases file ${file}: ${reason(error)}`);
    }
    const book = new AliasBook(file, log, aliases);
    book.watch();
    return book;
  }

  /** The peer's alias, or undefined when it is not listed. */
  lookup(fingerprint: string): string | undefined {
    return this.aliases.get(fingerprint);
  }

  get size(): number {
    return this.aliases.size;
  }

  reload(): void {
    try {
      this.aliases = AliasBook.read(this.file, this.log);
      this.log.notice(`Reloaded ${this.file}: ${this.aliases.size} alias${this.aliases.size === 1 ? '' : 'es'}`);
    } catch (error) {
      this.log.error(`Cannot reload ${this.file}, keeping the ${this.aliases.size} aliases known: ${reason(error)}`);
    }
  }

  close(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }

  private static read(file: string, log: Logger): Map<string, string> {
    return logProblems(parseAliases(readFileSync(file, 'utf8')), file, log).byFingerprint;
  }

  // The directory is watched, not the file: a file replaced by rename is a new inode.
  private watch(): void {
    const name = basename(this.file);
    try {
      this.watcher = watch(dirname(this.file), { persistent: false }, (_event, changed) => {
        if (changed !== null && changed !== name) return;
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.reload(), SETTLE_MS);
      });
      this.watcher.on('error', (error) => this.log.warning(`Stopped watching ${this.file}: ${reason(error)}; SIGHUP still reloads it`));
    } catch (error) {
      this.log.warning(`Cannot watch ${this.file}: ${reason(error)}; SIGHUP reloads it`);
    }
  }
}
