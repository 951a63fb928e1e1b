import { spawn } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import type { Environment } from './child-env.js';

/**
 * What a session needs of its child; a Node ChildProcess can be one (nodeLaunch), and so is a child
 * started by the spawn helper. What happens to it is told to the ChildEvents given at launch.
 */
export interface ChildLike {
  readonly pid?: number | undefined;
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  kill(signal: NodeJS.Signals): boolean;
}

/**
 * In the order a ChildProcess reports them: `spawned` once it runs and stdin and stdout are there;
 * `failed` when it cannot start (then no `spawned` or `exited`; Node's spawn still reports
 * `closed`, the spawn helper does not) or cannot be signalled; `exited`; `closed` once it has
 * exited and its stdin and stdout are closed. Methods of one object rather than event listeners:
 * the session is that object, and an idle peer pays for no closures.
 */
export interface ChildEvents {
  spawned(): void;
  failed(error: Error): void;
  exited(code: number | null, signal: NodeJS.Signals | null): void;
  closed(): void;
}

export interface LaunchRequest {
  command: string;
  args: readonly string[];
  /** Added to the base environment the launcher was made with (connection variables). */
  env: Environment;
}

/** Starts a session's child: stdin and stdout connected to tlsd, stderr shared with tlsd. */
export type Launch = (request: LaunchRequest, events: ChildEvents) => ChildLike;

/**
 * Node's own spawn: a fork of the whole daemon, which costs more the bigger the heap. `coverFds` go to the child at 3, 4, … in place of
 * what it would inherit there (systemd's activated sockets have no close-on-exec flag).
 */
export function nodeLaunch(base: Environment, coverFds: readonly number[]): Launch {
  return ({ command, args, env }, events) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit', ...coverFds], env: { ...base, ...env } });
    child.on('spawn', () => events.spawned());
    child.on('error', (error) => events.failed(error));
    child.on('exit', (code, signal) => events.exited(code, signal));
    child.on('close', () => events.closed());
    return child;
  };
}
