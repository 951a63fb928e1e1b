import type { ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import { childProcess } from '../os/lazy-module.js';
import { reason } from '../log/reason.js';

/** The signals a wrapper passes on to the command it runs, as an exec'd command would get them. */
export const forwardedSignals: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP', 'SIGINT', 'SIGUSR1', 'SIGUSR2', 'SIGQUIT'];

export type CommandResult = { status: number } | { failed: string; status: 126 | 127 };

/**
 * Runs a command in place of this process as far as Node allows (Node cannot exec): the command
 * inherits stdin, stdout and stderr, gets the signals in `forwardedSignals`, and its exit status is
 * returned as a shell reports it: the code, or 128+n when signal n killed it. A command that cannot
 * start gives 127 (not found) or 126 (found but not executable), with the reason.
 */
export function runCommand(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<CommandResult> {
  return new Promise((resolve) => {
    // Handlers go in before the spawn: under load the command can run (and its peer signal us)
    // before this process gets back from spawn(), and an unhandled SIGUSR1 would start Node's
    // inspector instead of reaching the command.
    let pending: NodeJS.Signals | undefined;
    let started: ChildProcess | undefined;
    const forward = (signal: NodeJS.Signals): void => {
      if (started === undefined) pending = signal;
      else if (started.exitCode === null && started.signalCode === null) started.kill(signal);
    };
    for (const signal of forwardedSignals) process.on(signal, forward);
    const child = childProcess().spawn(command, args, { stdio: 'inherit', env });
    started = child;
    if (pending !== undefined) forward(pending);
    const done = (result: CommandResult): void => {
      for (const signal of forwardedSignals) process.off(signal, forward);
      resolve(result);
    };
    child.once('error', (error: NodeJS.ErrnoException) => {
      if (child.pid !== undefined) return; // started; 'exit' reports how it ended
      done({ failed: reason(error), status: error.code === 'ENOENT' ? 127 : 126 });
    });
    child.once('exit', (code, signal) => {
      if (signal) done({ status: 128 + ((constants.signals as Record<string, number>)[signal] ?? 0) });
      else done({ status: code ?? 1 });
    });
  });
}
