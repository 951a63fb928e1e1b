import { closeSync, openSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import { BurstLog } from '../log/burst-log.js';
import type { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { trace, tracing } from '../log/trace.js';
import { tcpSocketOf } from '../os/tcp-probe.js';
import { addressGroup } from './address-group.js';
import { HandshakeSlots, type Eviction } from './handshake-slots.js';
import type { ProxiedEndpoints } from '../input/proxy-header.js';
import { readPreamble, type Preamble } from '../input/proxy-preamble.js';
import { TCP_TUNING } from './tcp-tuning.js';
import { TlsTerminator } from './tls-terminator.js';
import type { TrustedProxies } from './trusted-proxies.js';

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
  /**
   * --accept-proxy: connections from these addresses start with a PROXY header naming the client
   * (which is then the peer, for the limits and the caller); from any other address, none may.
   */
  trustedProxies?: TrustedProxies;
  /** Asked for every new TCP connection before any TLS work; a reason to refuse, or undefined. */
  refuse(remote: string): string | undefined;
  /**
   * A completed handshake, certificate or not: the caller decides. `remote` names the peer in log
   * lines; `proxied` is the client's connection to the balancer, for a connection from one.
   */
  onSecure(socket: TLSSocket, remote: string, proxied?: ProxiedEndpoints): void;
  /**
   * With worker processes: an admitted connection, paused and unread past any PROXY header, goes
   * here instead of to a TLS handshake in this process. Whoever takes it reports the handshake's
   * end (handshakeDone, handshakeFailed or abandon) and destroys `socket` once it is closed.
   */
  handOff?: (socket: Socket, remote: string, proxied?: ProxiedEndpoints) => void;
}

/** A handshake that ended well, as the Listener knew its connection. */
export interface Secured {
  remote: string;
  proxied?: ProxiedEndpoints;
}

/** A connection read before TLS (with --accept-proxy), until its handshake ends. */
interface Pending {
  /** The peer in log lines: the client, and the balancer it came through (`client via balancer`). */
  label: string;
  proxied?: ProxiedEndpoints;
  /** Header and handshake together end within the handshake timeout, counted from accept. */
  deadline: NodeJS.Timeout;
  /** Still reading what comes before TLS. */
  reading: boolean;
  /** From an --accept-proxy address: a PROXY header comes first. */
  fromBalancer: boolean;
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
  /** Handshakes run here; none with worker processes (handOff). */
  private readonly terminator: TlsTerminator | undefined;
  /** Handshakes in progress, by their TCP socket (what accept sees, and what an eviction ends). */
  private readonly slots: HandshakeSlots<Socket>;
  /** One client can cause an eviction per connection it opens: told in full once, then counted. */
  private readonly evictions: BurstLog;
  /** And a refusal: the first REFUSALS_IN_FULL of each kind an interval told in full, then counted. */
  private readonly refusals = new Map<string, BurstLog>();
  /** Open connections per address group, kept only with a per-address limit. */
  private readonly perAddress = new Map<string, number>();
  /** Connections whose handshake slot is held, with --accept-proxy only (see Pending). */
  private readonly pending = new Map<Socket, Pending>();

  constructor(private readonly options: ListenerOptions) {
    this.terminator = options.handOff
      ? undefined
      : new TlsTerminator(options.credentials, options.handshakeTimeoutMs, {
          secure: (tcp, socket) => {
            const secured = this.handshakeDone(tcp, socket);
            if (secured) options.onSecure(socket, secured.remote, secured.proxied);
          },
          failed: (tcp, socket, error) => this.handshakeFailed(tcp, reason(error), remoteOf(socket)),
        });
    this.slots = new HandshakeSlots(options.maxHandshakes);
    this.evictions = new BurstLog(
      options.log,
      EVICTION_SUMMARY_MS,
      (count, seconds, last) => `${count} more handshake(s) evicted in the last ${seconds} s to make room for other addresses, the last from ${last}`,
    );
    // Handed off, a connection must reach its worker unread: bytes this process read would be lost.
    const serverOptions = { ...TCP_TUNING, pauseOnConnect: options.handOff !== undefined };
    this.tcp = (options.activated ?? [undefined]).map(() => createNetServer(serverOptions, (socket) => this.accept(socket)));
  }

  /**
   * A handshake ended well: frees its slot and logs the original's line; what the Listener knew of
   * the connection, or undefined when it held no slot any more (evicted or past its deadline, and
   * closed: nothing to serve). Every handshake ends in this, handshakeFailed or abandon.
   */
  handshakeDone(tcp: Socket, socket?: TLSSocket): Secured | undefined {
    const pending = this.pending.get(tcp);
    const label = this.release(tcp);
    if (label === undefined) return undefined;
    // The original's line, logged once the handshake is done rather than at accept: a flood of
    // connections that never finish one costs no more log lines than before. The client's
    // address, the one a PROXY header named when there was one.
    const client = pending?.proxied?.source ?? { address: tcp.remoteAddress, port: tcp.remotePort };
    this.options.log.info(`Accepted a TCP connection from ${client.address}, port ${client.port}`);
    if (tracing && socket) trace('%s: handshake done, %s %s', label, socket.getProtocol(), socket.getCipher().name);
    return { remote: label, proxied: pending?.proxied };
  }

  /** A handshake failed (`why`, for the log line): frees its slot, unless it had none left. */
  handshakeFailed(tcp: Socket, why: string, fallbackLabel?: string): void {
    const label = this.release(tcp);
    if (tracing) trace('%s: handshake failed: %s', label ?? fallbackLabel ?? 'unknown peer', why);
    if (label !== undefined) this.options.log.info(`${label}: TLS handshake has failed: ${why}`);
  }

  /** A handed-off connection closed before its handshake said how it ended: its slot is freed quietly. */
  abandon(tcp: Socket): void {
    this.release(tcp);
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
    this.terminator?.setCredentials(credentials);
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
    trace('%s: refused: %s', remote, why);
    refusals.report(`${remote}: connection refused: ${why}`, `${remote}: connection refused: ${why}`);
    socket.destroy();
  }

  private accept(socket: Socket): void {
    const remote = formatAddress(socket.remoteAddress, socket.remotePort);
    trace('%s: accept', remote);
    const { maxHandshakes, maxPerAddress, trustedProxies } = this.options;
    // Reset before tlsd could ask who it was: neither trusted nor not, and nobody to serve. This
    // is what a balancer's health checks look like when they beat the event loop (HAProxy resets
    // each check once connected), so a line for each would flood the log.
    if (trustedProxies && socket.remoteAddress === undefined) {
      socket.destroy();
      return;
    }
    // A balancer's connections are its clients': counted per address once the header names them.
    const fromBalancer = trustedProxies?.has(socket.remoteAddress) ?? false;
    const group = addressGroup(socket.remoteAddress ?? '');
    const fromGroup = this.perAddress.get(group) ?? 0;
    // The other limits first: a newcomer they refuse must not cost anyone a slot.
    const refusal =
      maxPerAddress !== undefined && !fromBalancer && fromGroup >= maxPerAddress
        ? `too many connections from ${group} (${maxPerAddress})`
        : (descriptorShortage() ?? this.options.refuse(remote));
    // Fairness between networks, not hosts: an IPv6 /48, whose 65,536 /64s outnumber the slots.
    const admission = refusal === undefined ? this.slots.admit(socket, addressGroup(socket.remoteAddress ?? '', 48)) : undefined;
    if (!admission?.admitted) {
      this.turnAway(socket, remote, refusal ?? `too many handshakes in progress (${maxHandshakes})`);
      return;
    }
    if (admission.evicted) this.evict(admission.evicted, remote);
    if (!fromBalancer) this.countPerAddress(socket, group);
    if (!trustedProxies) {
      this.handOn(socket, remote);
      return;
    }
    const deadline = setTimeout(() => this.expire(socket), this.options.handshakeTimeoutMs);
    this.pending.set(socket, { label: remote, deadline, reading: true, fromBalancer });
    readPreamble(socket, fromBalancer, (preamble) => this.preambleRead(socket, preamble));
  }

  /** Counts an open connection against its address group's --max-per-ip, until it closes. */
  private countPerAddress(socket: Socket, group: string): void {
    if (this.options.maxPerAddress === undefined) return;
    this.perAddress.set(group, (this.perAddress.get(group) ?? 0) + 1);
    // The TCP socket closes last, after the TLS session and the child's output are done.
    socket.on('close', () => {
      const left = (this.perAddress.get(group) ?? 1) - 1;
      if (left > 0) this.perAddress.set(group, left);
      else this.perAddress.delete(group);
    });
  }

  /**
   * What came before TLS is read: the TLS server gets the connection, or it is closed. A proxied
   * connection's slot moves from the balancer's address group to the client's: counted under the
   * balancer, one client sending many connections through it would keep every other client of
   * the balancer from a slot. The move cannot fail, as it gives back the slot it takes.
   */
  private preambleRead(socket: Socket, preamble: Preamble): void {
    const pending = this.pending.get(socket);
    // Evicted or past its deadline meanwhile: it is closed, and was logged.
    if (!pending || !this.slots.holds(socket)) return;
    pending.reading = false;
    const remote = pending.label;
    const { log, maxPerAddress } = this.options;
    if (!('proxied' in preamble || 'direct' in preamble)) {
      this.release(socket);
      // A balancer's own connection is a health check, every few seconds: not worth a line. A
      // header the balancer gets wrong is a set-up to fix; one from a stranger, anyone's doing,
      // as often as it likes: counted, as every refusal, once it floods.
      if ('refused' in preamble) this.turnAway(socket, remote, preamble.refused);
      else {
        if ('gone' in preamble) log.info(`${remote}: ${preamble.gone}`);
        trace('%s: closed before TLS', remote);
        socket.destroy();
      }
      return;
    }
    if ('proxied' in preamble) {
      const { source } = preamble.proxied;
      pending.label = `${formatAddress(source.address, source.port)} via ${remote}`;
      pending.proxied = preamble.proxied;
      trace('%s: accept, by its PROXY header', pending.label);
      const group = addressGroup(source.address);
      const fromGroup = this.perAddress.get(group) ?? 0;
      if (maxPerAddress !== undefined && fromGroup >= maxPerAddress) {
        this.release(socket);
        this.turnAway(socket, pending.label, `too many connections from ${group} (${maxPerAddress})`);
        return;
      }
      this.slots.release(socket);
      this.slots.admit(socket, addressGroup(source.address, 48));
      this.countPerAddress(socket, group);
    }
    this.handOn(socket, pending.label, pending.proxied);
  }

  /** An admitted connection, read up to its TLS: to the handshake here, or to a worker's. */
  private handOn(socket: Socket, remote: string, proxied?: ProxiedEndpoints): void {
    if (this.options.handOff) this.options.handOff(socket, remote, proxied);
    else this.terminator?.take(socket);
  }

  /** The handshake deadline of a connection read before TLS: header and handshake together. */
  private expire(socket: Socket): void {
    const pending = this.pending.get(socket);
    const label = this.release(socket);
    if (label === undefined) return;
    trace('%s: handshake failed: timeout', label);
    const seconds = Math.round(this.options.handshakeTimeoutMs / 1000);
    if (pending?.reading && pending.fromBalancer) this.options.log.warning(`${label}: connection refused: no whole PROXY header within ${seconds} s`);
    // As Node words its own handshake timeout, so that one line means one thing whichever fired.
    else this.options.log.info(`${label}: TLS handshake has failed: TLS handshake timeout (ERR_TLS_HANDSHAKE_TIMEOUT)`);
    socket.destroy();
  }

  /**
   * Frees a handshake's slot; the peer's label, or undefined when it held none (evicted, past its
   * deadline, or released already).
   */
  private release(tcp: Socket): string | undefined {
    const pending = this.forget(tcp);
    if (!this.slots.release(tcp)) return undefined;
    return pending?.label ?? formatAddress(tcp.remoteAddress, tcp.remotePort);
  }

  /** Stops following a connection read before TLS (its deadline too); what was known of it. */
  private forget(tcp: Socket): Pending | undefined {
    const pending = this.pending.get(tcp);
    if (pending) {
      clearTimeout(pending.deadline);
      this.pending.delete(tcp);
    }
    return pending;
  }

  /** Ends a pending handshake that gave its slot up to `newcomer` (its slot is already taken). */
  private evict({ item: socket, group, held }: Eviction<Socket>, newcomer: string): void {
    const victim = this.forget(socket)?.label ?? formatAddress(socket.remoteAddress, socket.remotePort);
    trace('%s: evicted for %s', victim, newcomer);
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
