import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import type { ProxiedEndpoints } from '../input/proxy-header.js';
import { closeInheritedDescriptors } from '../os/inherited-descriptors.js';
import { AliasBook } from '../core/alias-book.js';
import { identityFromPem, type Identity } from '../core/identity.js';
import { PeerService } from '../core/peer-service.js';
import { TlsTerminator } from '../core/tls-terminator.js';
import type { Credentials, FromWorker, ToWorker, WorkerConfig } from './messages.js';

/** How stale the primary's count of a worker's peers may be. */
const COUNT_INTERVAL_MS = 100;

/** Set in a worker's environment by the primary that forks it (and taken out at once). */
export const WORKER_MARK = 'TLSD_WORKER';

/** A connection the primary handed over, until it closes. */
interface Handed {
  id: number;
  tcp: Socket;
  remote: string;
  proxied?: ProxiedEndpoints;
  /** Secure, waiting for the primary's `serve` or `drop`. */
  secure?: TLSSocket;
  /** The primary closed it and logged why: its failure is not reported again. */
  dropped?: boolean;
  /** Its peer slot came with it: served as soon as it is secure. */
  granted: boolean;
  /** The primary counts it until it closes (--max-per-ip). */
  track: boolean;
  /** Its handshake has ended, well or not. */
  ended?: boolean;
}

/**
 * A worker process: handshakes, peer checks and sessions for the connections the primary hands
 * it, and the dial lines it gives it. It keeps no limit of its own: each connection's peer slot is
 * the primary's to give and to take back.
 */
export function runWorker(): void {
  delete process.env[WORKER_MARK];
  // Ctrl-C, or systemd's stop, reaches every process of the group: a worker ends when the primary
  // says so, or when the primary is gone. SIGUSR1 needs a handler, or Node opens its inspector
  // (code execution for anyone who can connect to it) on that signal.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGUSR1'] as const) process.on(signal, () => {});
  // The primary's listening sockets from systemd are open here too, not close-on-exec: nothing of
  // the worker's may pass them on.
  closeInheritedDescriptors([]);
  process.once('message', (message: ToWorker) => {
    if (message.t !== 'config') process.exit(2);
    new Worker(message.config);
  });
}

class Worker {
  private readonly log: Logger;
  private readonly peers: PeerService<number>;
  private readonly terminator: TlsTerminator;
  private readonly aliases: AliasBook | undefined;
  private readonly byId = new Map<number, Handed>();
  private readonly byTcp = new Map<Socket, Handed>();
  private countQueued = false;
  private ending = false;

  constructor(config: WorkerConfig) {
    this.log = new Logger({ ...config.log, prefix: `worker ${config.index}: ` });
    process.on('uncaughtException', (error) => {
      this.log.error(`internal error: ${reason(error)}`);
      this.log.close();
      process.exit(1);
    });
    const identity = identityFromCredentials(config.credentials);
    this.aliases = config.aliasesFile === undefined ? undefined : AliasBook.open(config.aliasesFile, this.log);
    this.peers = new PeerService<number>(
      {
        ...config,
        endSignal: config.endSignal,
        certDir: config.certDir,
        verifyChain: config.credentials.ca !== undefined,
        aliases: this.aliases,
        activatedCount: 0,
        log: this.log,
        onPeerCount: () => this.queueCount(),
        released: (id) => send({ t: 'released', id }),
      },
      identity,
    );
    this.terminator = new TlsTerminator(identity.options, config.handshakeTimeoutMs, {
      secure: (tcp, socket) => this.secure(tcp, socket),
      failed: (tcp, _socket, error) => {
        const handed = this.byTcp.get(tcp);
        if (!handed || handed.dropped) return;
        handed.ended = true;
        send({ t: 'failed', id: handed.id, why: reason(error) });
      },
    });
    process.on('message', (message: ToWorker, handle: unknown) => this.receive(message, handle));
    // The primary is gone (killed, or crashed): no new work comes; what is running ends as at shutdown.
    process.on('disconnect', () => void this.end());
    this.peers.ready().then(
      () => send({ t: 'ready' }),
      (error: unknown) => {
        this.log.errorToStderr(`cannot start children: ${reason(error)}`);
        process.exit(1);
      },
    );
  }

  private receive(message: ToWorker, handle: unknown): void {
    switch (message.t) {
      case 'connection':
        return this.take(message, handle);
      case 'serve':
        return this.serve(message.id);
      case 'drop': {
        const handed = this.byId.get(message.id);
        if (handed) {
          handed.dropped = true;
          handed.tcp.destroy();
        }
        return;
      }
      case 'dial':
        void this.peers.dialAndServe(message.target, message.id);
        return;
      case 'reload':
        this.aliases?.reload();
        if (message.credentials) {
          const identity = identityFromCredentials(message.credentials);
          this.peers.identity = identity;
          this.terminator.setCredentials(identity.options);
        }
        send({ t: 'reloaded' });
        return;
      case 'status':
        send({ t: 'status', request: message.request, rows: this.peers.statusRows() });
        return;
      case 'shutdown':
        void this.end();
        return;
      case 'kill':
        this.peers.killAll();
        this.log.close();
        process.exit(1);
        return;
      case 'config':
        return;
    }
  }

  /** A connection from the primary: its handshake starts here, on the bytes the primary did not read. */
  private take({ id, remote, proxied, rest, granted, track }: Extract<ToWorker, { t: 'connection' }>, handle: unknown): void {
    const tcp = handle as Socket | undefined;
    // Closed by the primary before Node sent it (evicted while queued): nothing came.
    if (!tcp) {
      send({ t: 'closed', id });
      return;
    }
    const handed: Handed = { id, tcp, remote, proxied, granted, track };
    this.byId.set(id, handed);
    this.byTcp.set(tcp, handed);
    tcp.on('error', () => {}); // the TLS side reports what matters
    // After the TLS side has said how its handshake ended (its error comes in a later tick than
    // this close): the primary logs a failed handshake only while it still counts the connection.
    tcp.once('close', () =>
      setImmediate(() => {
        this.byId.delete(id);
        this.byTcp.delete(tcp);
        // Once its handshake has ended the primary follows it no further, unless it counts it.
        if (!handed.ended || handed.track || handed.dropped) send({ t: 'closed', id });
      }),
    );
    if (rest) tcp.unshift(Buffer.from(rest, 'base64'));
    this.terminator.take(tcp);
  }

  private secure(tcp: Socket, socket: TLSSocket): void {
    const handed = this.byTcp.get(tcp);
    if (!handed) {
      socket.destroy();
      return;
    }
    socket.on('error', () => {}); // until served; the session logs errors itself
    handed.ended = true;
    handed.secure = socket;
    send({ t: 'secure', id: handed.id });
    if (handed.granted) this.serve(handed.id);
  }

  /** The primary gave the peer a slot: its session starts (or it is refused here, and the slot goes back). */
  private serve(id: number): void {
    const handed = this.byId.get(id);
    const socket = handed?.secure;
    if (!handed || !socket) {
      send({ t: 'released', id });
      return;
    }
    handed.secure = undefined;
    this.peers.serve(socket, 'SERVER', handed.remote, {}, id, handed.proxied);
  }

  /** Shutdown, or the primary gone: every session ends as a single tlsd's do, then the worker exits. */
  private async end(): Promise<void> {
    if (this.ending) return;
    this.ending = true;
    for (const handed of this.byId.values()) if (handed.secure) handed.tcp.destroy();
    await this.peers.endAll();
    this.log.close();
    process.exit(0);
  }

  /**
   * The primary sums the workers' peers for systemd's STATUS=: told at most every COUNT_INTERVAL_MS,
   * not per connection (each message a write that wakes the primary).
   */
  private queueCount(): void {
    if (this.countQueued) return;
    this.countQueued = true;
    setTimeout(() => {
      this.countQueued = false;
      send({ t: 'peers', count: this.peers.peerCount });
    }, COUNT_INTERVAL_MS).unref();
  }
}

function identityFromCredentials({ key, cert, ca }: Credentials): Identity {
  return identityFromPem(Buffer.from(key), Buffer.from(cert), ca === undefined ? undefined : Buffer.from(ca));
}

let outbox: FromWorker[] = [];

/**
 * To the primary, with whatever else this turn of the event loop says, in one IPC message: a busy
 * worker has several things to say per connection, and each message is a write and a parse.
 * Once the primary is gone, nothing (the worker is ending).
 */
function send(message: FromWorker): void {
  outbox.push(message);
  if (outbox.length === 1) setImmediate(flushOutbox);
}

function flushOutbox(): void {
  const batch = outbox;
  outbox = [];
  if (process.connected) process.send?.(batch);
}
