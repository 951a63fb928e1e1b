import type { Daemon } from './daemon.js';
import { peerStatus, type Notifier } from './notify.js';

/**
 * SIGHUP reloads; SIGUSR1 logs the peer table; SIGTERM or SIGINT shuts down gracefully and exits 0
 * once every child is gone; a second one kills what is left and exits 1. systemd hears of each.
 */
export function handleSignals(daemon: Daemon, notifier: Notifier, exit: (code: number) => void): void {
  process.on('SIGHUP', () => {
    notifier.reloading();
    void daemon.reload().then(() => notifier.ready(peerStatus(daemon.peerCount)));
  });
  process.on('SIGUSR1', () => daemon.logStatus());
  let stopping = false;
  const stop = (): void => {
    if (stopping) {
      daemon.kill();
      exit(1);
      return;
    }
    stopping = true;
    notifier.stopping();
    void daemon.shutdown().then(() => exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
