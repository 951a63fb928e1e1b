import { UnixDatagramSender } from '../os/datagram.js';
import type { Logger } from '../log/logger.js';

/**
 * Tells systemd how tlsd is doing (sd_notify(3)): READY=1 once serving, RELOADING=1 and READY=1
 * around a reload, STOPPING=1 on shutdown, STATUS= lines, and WATCHDOG=1 keep-alives when the
 * unit has WatchdogSec=. Without NOTIFY_SOCKET it sends nothing.
 */
export class Notifier {
  private readonly sender: UnixDatagramSender | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private warned = false;
  private alive: () => boolean = () => true;

  /**
   * Reads NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID and removes them from `env`, so children
   * (which inherit it) never speak to systemd in tlsd's name.
   */
  constructor(
    env: NodeJS.ProcessEnv,
    pid: number,
    private readonly log: Logger,
  ) {
    const { NOTIFY_SOCKET: path, WATCHDOG_USEC: usec, WATCHDOG_PID: forPid } = env;
    delete env.NOTIFY_SOCKET;
    delete env.WATCHDOG_USEC;
    delete env.WATCHDOG_PID;
    if (path?.startsWith('@')) {
      // posix-socket copies the address with strncpy, so a name starting with NUL cannot be sent.
      log.warning(`Cannot notify systemd at ${path}: abstract socket names are not supported, only paths`);
    } else if (path) {
      this.sender = new UnixDatagramSender(path);
    }
    const interval = usec !== undefined && /^\d+$/.test(usec) && (forPid === undefined || Number(forPid) === pid) ? Number(usec) / 1000 : 0;
    if (this.sender && interval > 0) {
      // Twice per period, as sd_watchdog_enabled(3) advises; a stuck event loop stops them.
      // Node timers hold at most 2^31-1 ms (about 24 days); a longer period would fire every 1 ms.
      this.watchdog = setInterval(() => {
        if (this.alive()) this.send('WATCHDOG=1');
      }, Math.min(2 ** 31 - 1, Math.max(1, Math.floor(interval / 2))));
      this.watchdog.unref();
    }
  }

  /**
   * Keep-alives only while `check` holds (every worker is up): a daemon that has lost a worker and
   * cannot bring it back is restarted by systemd, as a stuck one is.
   */
  keepAliveWhile(check: () => boolean): void {
    this.alive = check;
  }

  ready(status: string): void {
    this.send(`READY=1\nSTATUS=${status}`);
  }

  reloading(): void {
    this.send(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`);
  }

  status(status: string): void {
    this.send(`STATUS=${status}`);
  }

  stopping(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.send('STOPPING=1');
  }

  private send(message: string): void {
    if (!this.sender) return;
    const failure = this.sender.send(Buffer.from(message));
    // Said once: systemd gone or a wrong path should not flood the log.
    if (failure && !this.warned) {
      this.warned = true;
      this.log.warning(`Cannot notify systemd at ${this.sender.path}: ${failure}`);
    }
  }
}

/** The STATUS= line: what `systemctl status` shows under the unit. */
export function peerStatus(count: number): string {
  return `Serving ${count} peer${count === 1 ? '' : 's'}`;
}
