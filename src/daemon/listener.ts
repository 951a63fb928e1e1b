import { closeSync, openSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type SecureContextOptions, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { BurstLog } from '../burst-log.js';
import type { Logger } from '../logger.js';
import { reason } from '../reason.js';
import { tcpSocketOf } from '../os/tcp-probe.js';
import { addressGroup } from './address-group.js';
import { HandshakeSlots, type Eviction } from './handshake-slots.js';
import { TCP_TUNING } from './tcp-tuning.js';

export interface ListenerOptions {
  host: string;
  port: number;
  /** Listening sockets passed by systemd (socket activation): served instead of binding host/port. */
  activated?: readonly number[];
  credentials: SecureContextOptions;
  handshakeTimeoutMs: number;
  /** Handshake slots, shared fairly between addresses (HandshakeSlots). */
  maxHandshakes: number;
  /** Most connections from one address (an IPv6 /64) at once, handshakes included; no limit when undefined. */
  maxPerAddress?: number;
  log: Logger;
  /** Asked for every new TCP connection before any TLS work; a reason to refuse, or undefined. */
  refuse(remote: string): string | undefined;
  /** A completed handshake, certificate or not: the caller decides. */
  onSecure(socket: TLSSocket, remote: string): void;
}

// Large enough that a burst of connections is queued by the kernel, not dropped.
const LISTEN_BACKLOG = 4096;
/** Evictions after the first of a burst are told in one line per this interval. */
const EVICTION_SUMMARY_MS = 10_000;
/**
 * Refusals of one kind logged in full per interval: enough for every refusal of an ordinary
 * burst to name its peer, few enough that a flood (a TCP handshake per line, thousands a second)
 * costs a few lines a second and cannot drown, or rate-limit away, everything else in the log.
 */
const REFUSALS_IN_FULL = 50;

/**
 * Accepts TCP connections and runs their TLS handshakes. Connections over a limit are closed
 * before the handshake costs anything; each handshake has a deadline, so a silent or slow client
 * holds one slot for a bounded time and never delays anyone else. Slots are shared fairly between
 * addresses: whoever fills them all is made to give one up to a client from elsewhere.
 */
export class Listener {
  private readonly tcp: NetServer[];
  private readonly tls: TlsServer;
  /** Handshakes in progress, by their TCP socket (what accept sees, and what an eviction ends). */
  private readonly slots: HandshakeSlots<Socket>;
  /** One client can cause an eviction per connection it opens: told in full once, then counted. */
  private readonly evictions: BurstLog;
  /** And a refusal: the first REFUSALS_IN_FULL of each kind an interval told in full, then counted. */
  private readonly refusals = new Map<string, BurstLog>();
  /** Open connections per address group, kept only with a per-address limit. */
  private readonly perAddress = new Map<string, number>();

  constructor(private readonly options: ListenerOptions) {
    this.tls = createTlsServer({
      ...options.credentials,
      requestCert: true,
      // Identity is the fingerprint: self-signed certificates are the norm, no CA is consulted.
      rejectUnauthorized: false,
      handshakeTimeout: options.handshakeTimeoutMs,
    });
    this.slots = new HandshakeSlots(options.maxHandshakes);
    this.evictions = new BurstLog(
      options.log,
      EVICTION_SUMMARY_MS,
      (count, seconds, last) => `${count} more handshake(s) evicted in the last ${seconds} s to make room for other addresses, the last from ${last}`,
    );
    // Every handshake ends in exactly one of these two events, which frees its slot (an evicted
    // one has none left: its connection is closed, and fails with "socket hang up").
    this.tls.on('secureConnection', (socket: TLSSocket) => {
      this.slots.release(tcpSocketOf(socket) ?? socket);
      // Half-open only once secure: a peer that ends its side still gets the child's whole reply,
      // while an end during the handshake fails it at once rather than at the deadline.
      socket.allowHalfOpen = true;
      // The original's line, logged once the handshake is done rather than at accept: a flood of
      // connections that never finish one costs no more log lines than before.
      const tcp = tcpSocketOf(socket) ?? socket;
      options.log.info(`Accepted a TCP connection from ${tcp.remoteAddress}, port ${tcp.remotePort}`);
      options.onSecure(socket, formatAddress(tcp.remoteAddress, tcp.remotePort));
    });
    this.tls.on('tlsClientError', (error: Error, socket: TLSSocket) => {
      if (this.slots.release(tcpSocketOf(socket) ?? socket)) options.log.info(`${remoteOf(socket)}: TLS handshake has failed: ${reason(error)}`);
      // Node leaves a failed socket open when this event has a listener: close it, or it leaks.
      socket.destroy();
    });
    this.tcp = (options.activated ?? [undefined]).map(() => createNetServer(TCP_TUNING, (socket) => this.accept(socket)));
  }

  get pendingHandshakes(): number {
    return this.slots.size;
  }

  /** Resolves with the addresses served, or rejects with a one-line reason (port in use, bad address). */
  listen(): Promise<AddressInfo[]> {
    const { host, port, activated } = this.options;
    return Promise.all(
      this.tcp.map((server, i) => {
        const fd = activated?.[i];
        const what = fd === undefined ? `${host}, port ${port}` : `the socket passed as descriptor ${fd}`;
        return new Promise<AddressInfo>((resolve, reject) => {
          const failed = (error: Error): void => reject(new Error(`Cannot listen on ${what}: ${reason(error)}`));
          server.once('error', failed);
          const ready = (): void => {
            server.off('error', failed);
            // Accept errors end nothing but that accept.
            server.on('error', (error) => this.options.log.error(`Cannot accept a connection: ${reason(error)}`));
            resolve(server.address() as AddressInfo);
          };
          if (fd === undefined) {
            this.options.log.announce('debug', `Attempting to bind: ${host}, port ${port}`);
            server.listen({ host, port, backlog: LISTEN_BACKLOG }, ready);
          } else server.listen({ fd, backlog: LISTEN_BACKLOG }, ready);
        });
      }),
    );
  }

  /** New credentials for connections accepted from now on. */
  setCredentials(credentials: SecureContextOptions): void {
    this.tls.setSecureContext(credentials);
  }

  close(): void {
    for (const server of this.tcp) server.close();
    this.evictions.flush();
    for (const refusals of this.refusals.values()) refusals.flush();
  }

  /**
   * Closes a connection over a limit (here, or the daemon's once it is secure) with a log line; of
   * each kind of refusal (its words before any number or address), a flood is counted, not listed.
   */
  turnAway(socket: Socket, remote: string, why: string): void {
    const kind = why.replace(/ (from|\().*$/, '');
    let refusals = this.refusals.get(kind);
    if (!refusals) {
      refusals = new BurstLog(this.options.log, EVICTION_SUMMARY_MS, (count, seconds, last) => `${count} more connection(s) refused in the last ${seconds} s, the last: ${last}`, REFUSALS_IN_FULL);
      this.refusals.set(kind, refusals);
    }
    refusals.report(`${remote}: connection refused: ${why}`, `${remote}: connection refused: ${why}`);
    socket.destroy();
  }

  private accept(socket: Socket): void {
    const remote = formatAddress(socket.remoteAddress, socket.remotePort);
    const { maxHandshakes, maxPerAddress } = this.options;
    const group = addressGroup(socket.remoteAddress ?? '');
    const fromGroup = this.perAddress.get(group) ?? 0;
    // The other limits first: a newcomer they refuse must not cost anyone a slot.
    const refusal =
      maxPerAddress !== undefined && fromGroup >= maxPerAddress
        ? `too many connections from ${group} (${maxPerAddress})`
        : (descriptorShortage() ?? this.options.refuse(remote));
    // Fairness between networks, not hosts: an IPv6 /48, whose 65,536 /64s outnumber the slots.
    const admission = refusal === undefined ? this.slots.admit(socket, addressGroup(socket.remoteAddress ?? '', 48)) : undefined;
    if (!admission?.admitted) {
      this.turnAway(socket, remote, refusal ?? `too many handshakes in progress (${maxHandshakes})`);
      return;
    }
    if (admission.evicted) this.evict(admission.evicted, remote);
    if (maxPerAddress !== undefined) {
      this.perAddress.set(group, fromGroup + 1);
      // The TCP socket closes last, after the TLS session and the child's output are done.
      socket.on('close', () => {
        const left = (this.perAddress.get(group) ?? 1) - 1;
        if (left > 0) this.perAddress.set(group, left);
        else this.perAddress.delete(group);
      });
    }
    this.tls.emit('connection', socket);
  }

  /** Ends a pending handshake that gave its slot up to `newcomer` (its slot is already taken). */
  private evict({ item: socket, group, held }: Eviction<Socket>, newcomer: string): void {
    const victim = formatAddress(socket.remoteAddress, socket.remotePort);
    this.evictions.report(`${victim}: handshake evicted to make room for ${newcomer}: ${group} held the most pending handshakes (${held} of ${this.options.maxHandshakes})`, group);
    socket.destroy();
  }
}

/**
 * libuv sheds connections silently once accept(2) fails with EMFILE, so tlsd would never know it
 * ran out. Opening one more descriptor tells, for a few microseconds: a connection that took the
 * last one is refused with the reason, rather than failing later when its child cannot start.
 */
function descriptorShortage(): string | undefined {
  try {
    closeSync(openSync('/dev/null', 'r'));
    return undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'EMFILE' || code === 'ENFILE' ? `out of file descriptors (${code})` : undefined;
  }
}

export function formatAddress(address: string | undefined, port: number | undefined): string {
  if (address === undefined) return 'unknown peer';
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** The peer's address, read from the TCP socket, which learnt it at accept and keeps it past a reset. */
function remoteOf(socket: TLSSocket): string {
  const tcp = tcpSocketOf(socket) ?? socket;
  return formatAddress(tcp.remoteAddress, tcp.remotePort);
}
