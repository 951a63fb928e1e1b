import type { Readable, Writable } from 'node:stream';

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

/** Variables a child gets, by name. */
export type Environment = Record<string, string>;

export interface LaunchRequest {
  command: string;
  args: readonly string[];
  /** Added to the base environment the launcher was made with (connection variables). */
  env: Environment;
}

/** Starts a session's child: stdin and stdout connected to tlsd, stderr shared with tlsd. */
export type Launch = (request: LaunchRequest, events: ChildEvents) => ChildLike;
