import type { Daemon } from './daemon.js';

/**
 * SIGHUP reloads; SIGTERM or SIGINT shuts down gracefully and exits 0 once every child is gone;
 * a second one kills what is left and exits 1.
 */
export function handleSignals(daemon: Daemon, exit: (code: number) => void): void {
  process.on('SIGHUP', () => void daemon.reload());
  let stopping = false;
  const stop = (): void => {
    if (stopping) {
      daemon.kill();
      exit(1);
      return;
    }
    stopping = true;
    void daemon.shutdown().then(() => exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
