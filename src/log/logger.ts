import { UnixDatagramSender } from '../os/datagram.js';
import { escapeUnprintable, unicodeEscape } from './unprintable.js';

export type Severity = 'error' | 'warning' | 'notice' | 'info' | 'debug';

const severityCode: Record<Severity, number> = { error: 3, warning: 4, notice: 5, info: 6, debug: 7 };
const LOG_DAEMON = 3 << 3;
const SYSLOG_RETRY_MS = 1_000;
/** Linux's: a write to a pipe of at most this many bytes is never interleaved with another's. */
const PIPE_BUF = 4096;
const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export interface LoggerOptions {
  /** The syslog identifier, also the prefix of stderr lines. */
  ident: string;
  /** Print every message to stderr as `ident: message`, as syslog's LOG_PERROR does. */
  stderr: boolean;
  /** The syslog socket; `/dev/log` unless a test or a container points elsewhere. */
  syslogPath?: string;
  /** Put before every message: a worker process's lines say which worker (`worker 2: `). */
  prefix?: string;
}

/**
 * Logs to syslog over a non-blocking datagram socket, and to stderr with -e or whenever syslog
 * cannot take the message (no /dev/log, nobody reading it), so that no message is lost silently.
 */
export class Logger {
  private readonly syslog: UnixDatagramSender;
  private readonly ident: string;
  private readonly alwaysStderr: boolean;
  private readonly prefix: string;
  private syslogRetryAt = 0;
  private pending: string[] = [];
  private exitHook = false;
  /** Messages waiting for release(), in order; undefined when nothing is held. */
  private held: Array<[Severity, string]> | undefined;

  constructor(options: LoggerOptions) {
    this.ident = options.ident;
    this.alwaysStderr = options.stderr;
    this.prefix = options.prefix ?? '';
    this.syslog = new UnixDatagramSender(options.syslogPath ?? '/dev/log');
  }

  error(message: string): void {
    this.log('error', message);
  }
  warning(message: string): void {
    this.log('warning', message);
  }
  notice(message: string): void {
    this.log('notice', message);
  }
  info(message: string): void {
    this.log('info', message);
  }
  debug(message: string): void {
    this.log('debug', message);
  }

  /** An error the user must see even without -e, such as a failure to start. */
  errorToStderr(message: string): void {
    this.release();
    this.log('error', message, true);
  }

  /**
   * From now until release(), messages wait; announce() lines do not. tlsd starts with the
   * original's three lines, which scripts read as the first three (its own test does): Initializing,
   * Attempting to bind, Listening on. Whatever else start-up has to say comes after them.
   */
  hold(): void {
    this.held ??= [];
  }

  /** Logs what hold() kept back, in order, and stops holding. */
  release(): void {
    const held = this.held;
    this.held = undefined;
    for (const [severity, message] of held ?? []) this.log(severity, message);
  }

  /** A start-up line scripts wait for: logged at once, ahead of whatever hold() keeps back. */
  announce(severity: Severity, message: string): void {
    this.write(severity, message, this.alwaysStderr);
  }

  log(severity: Severity, message: string, stderr = this.alwaysStderr): void {
    if (this.held) this.held.push([severity, message]);
    else this.write(severity, message, stderr);
  }

  private write(severity: Severity, message: string, stderr: boolean): void {
    // One line, and nothing in it that a terminal or a log viewer would act on, whatever a message
    // carries: text from peers is quoted where it is logged, and this holds if a quote is missed.
    const line = escapeUnprintable(this.prefix + message.replace(/[\r\n]+/g, ' '), unicodeEscape);
    let delivered = false;
    if (Date.now() >= this.syslogRetryAt) {
      delivered = this.syslog.send(Buffer.from(this.syslogRecord(severity, line))) === undefined;
      // With no syslog (no /dev/log, nobody reading) every message would cost a failed send:
      // messages go to stderr only, and syslog is tried again a second later.
      if (!delivered) this.syslogRetryAt = Date.now() + SYSLOG_RETRY_MS;
    }
    if (stderr || !delivered) this.toStderr(`${this.ident}: ${line}\n`);
  }

  close(): void {
    this.release();
    this.flush();
    this.syslog.close();
  }

  /**
   * Lines logged in one turn of the event loop reach stderr in one write: a busy daemon logs
   * several lines per connection, and each write to a pipe wakes its reader. Same order, and
   * written before anything that needs I/O can follow (a timer would let a peer see a reply before
   * the line that led to it); whatever is pending is written before exit.
   */
  private toStderr(text: string): void {
    this.pending.push(text);
    if (this.pending.length > 1) return;
    setImmediate(() => this.flush());
    if (!this.exitHook) {
      this.exitHook = true;
      process.once('exit', () => this.flush());
    }
  }

  private flush(): void {
    const lines = this.pending;
    this.pending = [];
    // Worker processes share stderr: a pipe keeps a write whole only up to PIPE_BUF bytes, so
    // larger batches go in several writes, each of whole lines.
    let batch = '';
    let bytes = 0;
    for (const line of lines) {
      const size = Buffer.byteLength(line);
      if (bytes > 0 && bytes + size > PIPE_BUF) {
        process.stderr.write(batch);
        batch = '';
        bytes = 0;
      }
      batch += line;
      bytes += size;
    }
    if (batch.length > 0) process.stderr.write(batch);
  }

  // The local syslog format glibc's syslog(3) writes to /dev/log.
  private syslogRecord(severity: Severity, message: string): string {
    const now = new Date();
    const day = String(now.getDate()).padStart(2, ' ');
    const time = [now.getHours(), now.getMinutes(), now.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
    const priority = LOG_DAEMON | severityCode[severity];
    return `<${priority}>${months[now.getMonth()]} ${day} ${time} ${this.ident}[${process.pid}]: ${message}`;
  }
}

/**
 * Shows untrusted text (stdin lines, peer data) in a log line: in double quotes, cut short, with
 * `"`, `\` and every unprintable character escaped as JSON does (`\n`, `\u007f`), so that nothing
 * in it can end the quotes, the line, or change how the line reads.
 */
export function quote(text: string, max = 80): string {
  const cut = text.length > max ? `${text.slice(0, max)}…` : text;
  return escapeUnprintable(JSON.stringify(cut), unicodeEscape);
}

/**
 * Shows untrusted bytes (a server name as sent) in a log line: in double quotes, cut short,
 * printable ASCII as it is, `\"` and `\\`, and every other byte as `\xNN`, so the exact bytes can
 * be read back whatever their encoding.
 */
export function quoteBytes(bytes: Uint8Array, max = 80): string {
  let text = '';
  for (const byte of bytes.subarray(0, max)) {
    if (byte === 0x22 || byte === 0x5c) text += `\\${String.fromCharCode(byte)}`;
    else if (byte >= 0x20 && byte < 0x7f) text += String.fromCharCode(byte);
    else text += `\\x${byte.toString(16).padStart(2, '0')}`;
  }
  return `"${text}"${bytes.length > max ? '…' : ''}`;
}
