import type { Logger } from '../log/logger.js';
import type { Service } from '../core/daemon.js';
import { peerStatus, type Notifier } from './notify.js';
import { signalNumber } from '../os/signal-names.js';

/**
 * SIGHUP reloads; SIGUSR1 logs the peer table; SIGTERM or SIGINT shuts down gracefully and exits 0
 * once every child is gone; a second one kills what is left and exits 1. systemd hears of each.
 * The log says what the original's did: `Received signal N` for each, and `Shutting down` last.
 */
export function handleSignals(daemon: Service, notifier: Notifier, log: Logger, exit: (code: number) => void): void {
  const on = (signal: NodeJS.Signals, handler: () => void): void => {
    process.on(signal, () => {
      log.info(`Received signal ${signalNumber(signal)}`);
      handler();
    });
  };
  on('SIGHUP', () => {
    notifier.reloading();
    void daemon.reload().then(() => notifier.ready(peerStatus(daemon.peerCount)));
  });
  on('SIGUSR1', () => daemon.logStatus());
  let stopping = false;
  const stop = (): void => {
    if (stopping) {
      daemon.kill();
      log.info('Shutting down');
      exit(1);
      return;
    }
    stopping = true;
    notifier.stopping();
    void daemon.shutdown().then(() => {
      log.info('Shutting down');
      exit(0);
    });
  };
  on('SIGTERM', stop);
  on('SIGINT', stop);
}
