import { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { usageHint, type LogChoices } from './option-spec.js';

/** The program's logger; from here on an unexpected exception is one log line and exit 1. */
export function startLogging(choices: LogChoices): Logger {
  const log = new Logger({ ident: choices.ident, stderr: choices.stderr === true, syslogPath: process.env.TLSD_SYSLOG_SOCKET });
  process.on('uncaughtException', (error) => fail(log, `internal error: ${reason(error)}`));
  return log;
}

/** Start-up failures: one line on stderr (and syslog), exit 1, never a stack trace. */
export function fail(log: Logger, message: string): never {
  log.errorToStderr(message);
  process.exit(1);
}

/**
 * Ends the process with the status `run` settles to, or with `fail` and the message `describe`
 * makes of its error.
 */
export function exitWhenDone(log: Logger, run: Promise<number>, describe: (error: unknown) => string): void {
  run
    .then((status) => {
      log.close();
      process.exit(status);
    })
    .catch((error: unknown) => fail(log, describe(error)));
}

/** A usage problem found after parsing: the message and the usage hint on stderr, exit 1, as commander does. */
export function usageError(name: string, usage: string, message: string): never {
  process.stderr.write(`${message}\n${usageHint(name, usage)}\n`);
  process.exit(1);
}
