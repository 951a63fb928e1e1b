import { spawn } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import type { Environment } from './child-env.js';

/**
 * What a session needs of its child; a Node ChildProcess is one, and so is a child started by the
 * spawn helper. Events: 'spawn' once it runs and stdin and stdout are there; 'error' when it
 * cannot start (no 'spawn' then) or cannot be signalled; 'exit' (code, signal); 'close' once it
 * has exited and its stdin and stdout are closed.
 */
export interface ChildLike {
  readonly pid?: number | undefined;
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  kill(signal: NodeJS.Signals): boolean;
  on(event: 'spawn' | 'close', listener: () => void): this;
  on(event: 'error', listener: (error: Error) => void): this;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
}

export interface LaunchRequest {
  command: string;
  args: readonly string[];
  /** Added to the base environment the launcher was made with (connection variables). */
  env: Environment;
}

/** Starts a session's child: stdin and stdout connected to tlsd, stderr shared with tlsd. */
export type Launch = (request: LaunchRequest) => ChildLike;

/**
 * Node's own spawn: a fork of the whole daemon, which costs more the bigger the heap. `coverFds` go to the child at 3, 4, … in place of
 * what it would inherit there (systemd's activated sockets have no close-on-exec flag).
 */
export function nodeLaunch(base: Environment, coverFds: readonly number[]): Launch {
  return ({ command, args, env }) => spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit', ...coverFds], env: { ...base, ...env } });
}
