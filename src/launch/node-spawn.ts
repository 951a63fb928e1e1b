import { spawn } from 'node:child_process';
import type { Environment, Launch } from './launch.js';

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
