import { openSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { trace, tracing } from '../log/trace.js';
import { nodeLaunch } from '../launch/node-spawn.js';
import { SpawnHelper } from '../launch/spawn-helper.js';
import type { DialTarget } from '../input/dial-line.js';
import type { ProxiedEndpoints } from '../input/proxy-header.js';
import type { ProxyAddress } from '../input/proxy-url.js';
import type { AliasBook } from './alias-book.js';
import { saveCertificate } from './cert-dir.js';
import { baseEnvironment, connectionEnvironment } from './child-env.js';
import { dial } from './dialer.js';
import type { Identity } from './identity.js';
import { formatAddress } from './listener.js';
import { checkPeer, type Expectation, type TrustPolicy } from './peer-check.js';
import { peerNames } from './peer-names.js';
import { Session, type SessionSettings } from './session.js';
import type { Side } from './side.js';

export interface PeerServiceOptions<Ticket> {
  command: string;
  args: readonly string[];
  /** -s: sent to a child when its connection ends. */
  endSignal: NodeJS.Signals | undefined;
  /** Without -n a peer must present a certificate. */
  requireCert: boolean;
  /** -d: where peer certificates are kept. */
  certDir: string | undefined;
  /** --ca given: peers are verified against it. */
  verifyChain: boolean;
  /** --aliases: serve only the peers listed in this book. */
  aliases: AliasBook | undefined;
  /** --socks (or ALL_PROXY): outgoing connections go through this SOCKS5 proxy. */
  proxy?: ProxyAddress;
  handshakeTimeoutMs: number;
  /** How many sockets systemd passed this process: children get /dev/null at their numbers. */
  activatedCount: number;
  /** The spawn helper program (src/launch/spawn-helper.c); Node's spawn when undefined. */
  spawnHelper?: string;
  /** The environment children inherit (connection variables aside). */
  environment: Readonly<NodeJS.ProcessEnv>;
  /** Told whenever the number of peers changes. */
  onPeerCount?: (count: number) => void;
  /** A connection's peer slot is free again: its session ended, or it was never started. */
  released(ticket: Ticket): void;
  log: Logger;
}

/** How often connections Node is not reading from are checked for a reset (see Session.probe). */
const PROBE_INTERVAL_MS = 1_000;
/** How long a refused peer has to read our close_notify before the socket is destroyed. */
const REFUSED_LINGER_MS = 2_000;

/**
 * Secure connections to sessions: checks each peer, starts its child, and keeps the table of
 * peers; dials `host port` targets. What a single tlsd and each worker process share; the limits
 * are not here but with whoever holds the peer slots, which each connection's `Ticket` names
 * (released once the connection's slot is free).
 */
export class PeerService<Ticket> {
  private readonly sessions = new Map<Session, PeerRow<Ticket>>();
  private readonly spawner: SpawnHelper | undefined;
  private readonly trust: TrustPolicy;
  private readonly sessionSettings: SessionSettings;
  private readonly probing: NodeJS.Timeout;
  private stopping = false;
  private lastSessionEnded: (() => void) | undefined;

  constructor(
    private readonly options: PeerServiceOptions<Ticket>,
    /** Ours, for dialing; the caller replaces it on reload. */
    public identity: Identity,
  ) {
    this.trust = { requireCert: options.requireCert, verifyChain: options.verifyChain, aliases: options.aliases };
    // What children get at descriptors 3, 4, … in place of activated sockets.
    const coverFds = Array.from({ length: options.activatedCount }, () => openSync('/dev/null', 'r'));
    const base = baseEnvironment(options.environment);
    const { command, args, endSignal, log } = options;
    this.spawner = options.spawnHelper === undefined ? undefined : new SpawnHelper({ program: options.spawnHelper, base, coverFds, endSignal, log });
    // How children start: through the spawn helper, else (off Linux, or asked to) Node's spawn.
    const launch = this.spawner?.launch ?? nodeLaunch(base, coverFds);
    this.sessionSettings = { command, args, endSignal, log, launch, ended: (session) => this.sessionEnded(session) };
    this.probing = setInterval(() => {
      for (const session of this.sessions.keys()) session.probe();
    }, PROBE_INTERVAL_MS).unref();
  }

  /** Resolves once children can be started (the spawn helper is up), or rejects with why not. */
  async ready(): Promise<void> {
    await this.spawner?.ready();
  }

  /** The peers served: one per session. */
  get peerCount(): number {
    return this.sessions.size;
  }

  /** One row per peer, for SIGUSR1's table. */
  statusRows(now = Date.now()): string[] {
    const rows: string[] = [];
    for (const [session, row] of this.sessions) {
      const who = row.sha256 === undefined ? 'no certificate' : `SHA256 ${row.sha256}${row.alias === undefined ? '' : ` (${row.alias})`}`;
      const child = session.pid === undefined ? 'child gone' : `child ${session.pid}`;
      const age = Math.round((now - session.startedAt) / 1000);
      rows.push(`${row.side} ${row.remote} ${who}, ${child}, ${session.bytesIn} bytes in, ${session.bytesOut} bytes out, ${age} s`);
    }
    return rows;
  }

  /**
   * A secure connection that holds a peer slot, from handshake to the end of its child
   * (sessionEnded). Nothing waits in between: a suspended async function per idle peer would cost
   * its memory.
   */
  serve(socket: TLSSocket, side: Side, remote: string, expectation: Expectation, ticket: Ticket, proxied?: ProxiedEndpoints): void {
    this.admit(socket, side, remote, expectation, ticket, proxied).then(
      (session) => {
        if (!session) this.options.released(ticket);
      },
      (error: unknown) => {
        // A fault of ours while admitting one peer ends that connection, not the daemon.
        this.options.log.error(`${remote}: ${reason(error)}, connection closed`);
        socket.destroy();
        this.options.released(ticket);
      },
    );
  }

  /** Dials a `host port` target whose peer slot `ticket` holds, and serves it once connected. */
  async dialAndServe(target: DialTarget, ticket: Ticket): Promise<void> {
    const label = formatAddress(target.host, target.port);
    const { log, handshakeTimeoutMs } = this.options;
    log.debug(`Connecting to ${target.host}, port ${target.port}`);
    trace('%s: dial', label);
    let socket: TLSSocket;
    try {
      socket = await dial(target, this.identity.context, handshakeTimeoutMs, this.options.proxy);
    } catch (error) {
      if (tracing) trace('%s: dial failed: %s', label, reason(error));
      log.warning(`Cannot connect to ${label}: ${reason(error)}`);
      this.options.released(ticket);
      return;
    }
    if (tracing) trace('%s: handshake done, %s %s', label, socket.getProtocol(), socket.getCipher().name);
    // The address connected to, as the original names it; through a proxy, the name dialed.
    log.info(`Connected to ${this.options.proxy ? target.host : (socket.remoteAddress ?? target.host)}, port ${target.port}`);
    this.serve(socket, 'CLIENT', label, { pin: target.pin, host: target.name ?? target.host }, ticket);
  }

  /**
   * Shutdown: every child sees EOF (and the -s signal) and what they still write is delivered;
   * resolves once all of them are gone.
   */
  endAll(): Promise<void> {
    this.stopping = true;
    clearInterval(this.probing);
    this.options.aliases?.close();
    for (const session of this.sessions.keys()) session.end();
    return this.sessions.size === 0 ? Promise.resolve() : new Promise((resolve) => (this.lastSessionEnded = resolve));
  }

  /** A second signal: kill what is left. */
  killAll(): number {
    const count = this.sessions.size;
    for (const session of this.sessions.keys()) session.kill();
    return count;
  }

  private sessionEnded(session: Session): void {
    const row = this.sessions.get(session);
    this.sessions.delete(session);
    if (row) this.options.released(row.ticket);
    this.options.onPeerCount?.(this.peerCount);
    this.options.log.info(`${session.label}: session ended`);
    if (this.sessions.size === 0) this.lastSessionEnded?.();
  }

  /** Checks the peer and starts its session; undefined when it is turned away or tlsd is stopping. */
  private async admit(socket: TLSSocket, side: Side, remote: string, expectation: Expectation, ticket: Ticket, proxied?: ProxiedEndpoints): Promise<Session | undefined> {
    const { options } = this;
    const { log } = options;
    socket.on('error', () => {}); // until the session takes over; it logs errors itself
    const verdict = checkPeer(socket, this.trust, expectation);
    if ('refused' in verdict) {
      trace('%s: refused: %s', remote, verdict.refused);
      log.warning(`${remote}: ${verdict.refused}, connection closed`);
      closeGently(socket);
      return undefined;
    }
    const peer = verdict.accepted;
    const { certificate, sha256 } = peer;
    // The original's line for scripts that read it; ours, with the peer's label, says which peer.
    if (sha256) log.debug(`Peer's fingerprint: ${sha256}`);
    log.info(`${remote}: connected as ${side}, peer SHA256 ${sha256 ?? '(none)'}${peer.alias === undefined ? '' : ` (${peer.alias})`}`);
    if (options.certDir && certificate && sha256) {
      const failure = await saveCertificate(options.certDir, sha256, certificate.raw);
      if (failure) log.warning(`${remote}: cannot save the certificate in ${options.certDir}: ${reason(failure)}`);
    }
    if (this.stopping || socket.destroyed) {
      trace('%s: dropped: %s', remote, this.stopping ? 'shutting down' : 'connection closed');
      socket.destroy();
      return undefined;
    }
    const names = peerNames(socket, { side, dialed: expectation.host, certificate, note: (problem) => log.notice(`${remote}: ${problem}`) });
    const env = connectionEnvironment(socket, { side, peer, ...names, proxied });
    trace('%s: admitted as %s, SHA256 %s', remote, side, sha256 ?? '(none)');
    const session = new Session(socket, this.sessionSettings, remote, env);
    this.sessions.set(session, { side, remote, sha256, alias: peer.alias, ticket });
    options.onPeerCount?.(this.peerCount);
    session.start();
    return session;
  }
}

interface PeerRow<Ticket> {
  side: Side;
  remote: string;
  sha256: string | undefined;
  alias: string | undefined;
  ticket: Ticket;
}

/** A refused peer gets close_notify and a FIN, not a reset: its client reports a clean end. */
function closeGently(socket: TLSSocket): void {
  socket.resume(); // whatever it already sent is discarded, so the kernel has no reason to reset
  socket.end();
  setTimeout(() => socket.destroy(), REFUSED_LINGER_MS).unref();
}
