import { openSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { quote, type Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { trace, tracing } from '../log/trace.js';
import { AliasBook } from './alias-book.js';
import { saveCertificate } from './cert-dir.js';
import { baseEnvironment, connectionEnvironment } from './child-env.js';
import type { Side } from './side.js';
import { nodeLaunch } from '../launch/node-spawn.js';
import { joinSplitTargets, parseDialLine, type DialTarget } from '../input/dial-line.js';
import { dial } from './dialer.js';
import { loadIdentity, reloadWarnings, type Identity } from './identity.js';
import { readLines } from '../input/line-reader.js';
import { formatAddress, Listener } from './listener.js';
import { checkPeer, type Expectation, type TrustPolicy } from './peer-check.js';
import { peerNames } from './peer-names.js';
import { PeerSlots } from './peer-slots.js';
import type { ProxiedEndpoints } from '../input/proxy-header.js';
import type { ProxyAddress } from '../input/proxy-url.js';
import { Session, type SessionSettings } from './session.js';
import { SpawnHelper } from '../launch/spawn-helper.js';
import type { TrustedProxies } from './trusted-proxies.js';

export interface DaemonOptions {
  keyFile: string;
  certFile: string;
  host: string;
  port: number;
  command: string;
  args: readonly string[];
  /** -s: sent to a child when its connection ends. */
  endSignal: NodeJS.Signals | undefined;
  /** Without -n a peer must present a certificate. */
  requireCert: boolean;
  /** -d: where peer certificates are kept. */
  certDir: string | undefined;
  /** --ca: verify peers against this CA bundle. */
  caFile: string | undefined;
  /** --aliases: serve only the peers listed in this fp2alias file. */
  aliasesFile: string | undefined;
  /** --socks (or ALL_PROXY): outgoing connections go through this SOCKS5 proxy. */
  proxy?: ProxyAddress;
  maxPeers: number;
  /** --max-per-ip: most connections from one address (an IPv6 /64) at once; no limit when undefined. */
  maxPerAddress?: number;
  /** --accept-proxy: the balancers whose PROXY headers name the peers they pass on. */
  trustedProxies?: TrustedProxies;
  maxHandshakes: number;
  handshakeTimeoutMs: number;
  /** Sockets passed by systemd, served instead of binding host and port. */
  activated?: readonly number[];
  /** Told whenever the number of peers changes (systemd's STATUS=). */
  onPeerCount?: (count: number) => void;
  /** The spawn helper program (src/launch/spawn-helper.c); Node's spawn when undefined. */
  spawnHelper?: string;
  /** Called once bound and the key read, before serving: the CLI drops privileges here. */
  beforeServing?: () => void;
  /** `host port` lines to dial; none when undefined. */
  dialInput: Readable | undefined;
  /** tlsd's environment, which children inherit (connection variables aside): the core reads no other. */
  environment: Readonly<NodeJS.ProcessEnv>;
  log: Logger;
}

/** Longer stdin lines are reported and skipped: a host name and a port never need this much. */
const MAX_LINE_BYTES = 4096;
/** How long a refused peer has to read our close_notify before the socket is destroyed. */
const REFUSED_LINGER_MS = 2_000;
/** How often connections Node is not reading from are checked for a reset (see Session.probe). */
const PROBE_INTERVAL_MS = 1_000;

/** The tlsd core: listens, dials, and runs one session per peer within the limits. */
export class Daemon {
  private readonly sessions = new Map<Session, PeerRow>();
  private readonly spawner: SpawnHelper | undefined;
  private readonly slots: PeerSlots;
  private readonly listener: Listener;
  private readonly trust: TrustPolicy;
  private readonly sessionSettings: SessionSettings;
  private stopping = false;
  private reloading: Promise<void> = Promise.resolve();
  /** Settles when the last session has ended, once shutdown has begun. */
  private drained: Promise<void> | undefined;
  private lastSessionEnded: (() => void) | undefined;

  private constructor(
    private readonly options: DaemonOptions,
    private identity: Identity,
    aliases: AliasBook | undefined,
  ) {
    this.trust = { requireCert: options.requireCert, verifyChain: options.caFile !== undefined, aliases };
    this.slots = new PeerSlots(options.maxPeers);
    // What children get at descriptors 3, 4, … in place of activated sockets.
    const coverFds = options.activated?.length ? options.activated.map(() => openSync('/dev/null', 'r')) : [];
    const base = baseEnvironment(options.environment);
    this.spawner = options.spawnHelper === undefined ? undefined : new SpawnHelper({ program: options.spawnHelper, base, coverFds, log: options.log });
    // How children start: through the spawn helper, else (off Linux, or asked to) Node's spawn.
    const launch = this.spawner?.launch ?? nodeLaunch(base, coverFds);
    const { command, args, endSignal, log } = options;
    this.sessionSettings = { command, args, endSignal, log, launch, ended: (session) => this.sessionEnded(session) };
    this.listener = new Listener({
      host: options.host,
      port: options.port,
      activated: options.activated,
      maxPerAddress: options.maxPerAddress,
      trustedProxies: options.trustedProxies,
      credentials: identity.options,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      maxHandshakes: options.maxHandshakes,
      log: options.log,
      refuse: () => this.refusal(),
      onSecure: (socket, remote, proxied) => {
        if (this.refusal() === undefined && this.slots.tryAcquire()) this.serve(socket, 'SERVER', remote, {}, proxied);
        else this.listener.turnAway(socket, remote, this.refusal() ?? 'peer limit reached');
      },
    });
  }

  /** Loads the identity and starts listening; rejects with a one-line reason. */
  static async start(options: DaemonOptions): Promise<Daemon> {
    const identity = await loadIdentity(options);
    const aliases = options.aliasesFile === undefined ? undefined : AliasBook.open(options.aliasesFile, options.log);
    const daemon = new Daemon(options, identity, aliases);
    let addresses: AddressInfo[];
    try {
      addresses = await daemon.listener.listen();
      options.beforeServing?.();
    } catch (error) {
      aliases?.close();
      throw error;
    }
    await daemon.spawner?.ready();
    for (const address of addresses) options.log.announce('info', `Listening on ${address.address}, port ${address.port}`);
    options.log.info(`Our certificate's SHA256: ${identity.fingerprint}`);
    if (identity.exposure) options.log.warning(identity.exposure);
    for (const warning of reloadWarnings(options)) options.log.warning(warning);
    if (aliases) options.log.info(`Serving the ${aliases.size} peers listed in ${aliases.file}`);
    if (options.trustedProxies) options.log.info(`Reading PROXY headers from ${options.trustedProxies.entries.join(', ')}, and only from there`);
    if (options.dialInput) void daemon.readDialLines(options.dialInput);
    setInterval(() => {
      for (const session of daemon.sessions.keys()) session.probe();
    }, PROBE_INTERVAL_MS).unref();
    return daemon;
  }

  /**
   * The peers served: one per session (systemd's STATUS=, SIGUSR1's Status: line). A slot is held
   * from before that, by a dial or an admission still under way, which is no peer yet.
   */
  get peerCount(): number {
    return this.sessions.size;
  }

  /** SIGUSR1: one line per peer, for an operator asking what is going on. */
  logStatus(): void {
    for (const line of this.statusLines()) this.options.log.notice(line);
  }

  statusLines(now = Date.now()): string[] {
    const lines = [`Status: ${this.peerCount} peer(s), ${this.listener.pendingHandshakes} handshake(s) in progress`];
    for (const [session, row] of this.sessions) {
      const who = row.sha256 === undefined ? 'no certificate' : `SHA256 ${row.sha256}${row.alias === undefined ? '' : ` (${row.alias})`}`;
      const child = session.pid === undefined ? 'child gone' : `child ${session.pid}`;
      const age = Math.round((now - session.startedAt) / 1000);
      lines.push(`${row.side} ${row.remote} ${who}, ${child}, ${session.bytesIn} bytes in, ${session.bytesOut} bytes out, ${age} s`);
    }
    return lines;
  }

  /** SIGHUP: new key, certificate (and aliases) for new connections; on failure the old ones stay. */
  reload(): Promise<void> {
    const { log } = this.options;
    log.info('Reloading key and certificate');
    this.reloading = this.reloading.then(async () => {
      this.trust.aliases?.reload();
      try {
        this.identity = await loadIdentity(this.options);
        this.listener.setCredentials(this.identity.options);
        log.notice(`Reloaded key and certificate, SHA256 ${this.identity.fingerprint}`);
        if (this.identity.exposure) log.warning(this.identity.exposure);
      } catch (error) {
        // The original's words; where it then exited, we go on with what was loaded before.
        log.error(`Failed to load key or certificate: ${reason(error)}`);
        log.notice(`Kept the old key and certificate, SHA256 ${this.identity.fingerprint}`);
      }
    });
    return this.reloading;
  }

  /**
   * SIGTERM/SIGINT: stop accepting and dialing, let every child see EOF (and the -s signal),
   * deliver what they still write, and resolve once all of them are gone. Each child still
   * running is named as it is told (Session's `Waiting for process N to exit`).
   */
  shutdown(): Promise<void> {
    if (this.drained) return this.drained;
    this.options.log.info('Terminating gracefully');
    this.stopping = true;
    this.listener.close();
    this.options.dialInput?.destroy();
    this.trust.aliases?.close();
    this.slots.close();
    for (const session of this.sessions.keys()) session.end();
    this.drained = this.sessions.size === 0 ? Promise.resolve() : new Promise((resolve) => (this.lastSessionEnded = resolve));
    return this.drained;
  }

  /** A second signal: kill what is left. */
  kill(): void {
    this.options.log.notice(`Killing ${this.sessions.size} remaining session(s)`);
    for (const session of this.sessions.keys()) session.kill();
  }

  private refusal(): string | undefined {
    if (this.stopping) return 'shutting down';
    if (this.slots.taken >= this.slots.max) return `peer limit reached (${this.slots.max})`;
    return undefined;
  }

  private async readDialLines(input: Readable): Promise<void> {
    const { log } = this.options;
    try {
      for await (const item of joinSplitTargets(readLines(input, MAX_LINE_BYTES))) {
        if (this.stopping) break;
        if ('tooLong' in item) {
          log.warning(`Skipped a stdin line of ${item.tooLong} bytes: longer than ${MAX_LINE_BYTES}`);
          continue;
        }
        const parsed = parseDialLine(item.line);
        if ('blank' in parsed) continue;
        if ('error' in parsed) {
          log.warning(`Skipped stdin line ${quote(item.line)}: ${parsed.error}`);
          continue;
        }
        // Waiting here stops reading stdin, so queued lines cost nothing until a slot frees.
        if (!(await this.slots.acquire())) break;
        void this.dialAndServe(parsed.target);
      }
      // As the original: the end of stdin stops dialing, not serving.
      if (!this.stopping) log.info('stdin is closed');
    } catch (error) {
      if (!this.stopping) log.error(`Cannot read stdin: ${reason(error)}`);
    }
  }

  private async dialAndServe(target: DialTarget): Promise<void> {
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
      this.slots.release();
      return;
    }
    if (tracing) trace('%s: handshake done, %s %s', label, socket.getProtocol(), socket.getCipher().name);
    // The address connected to, as the original names it; through a proxy, the name dialed.
    log.info(`Connected to ${this.options.proxy ? target.host : (socket.remoteAddress ?? target.host)}, port ${target.port}`);
    this.serve(socket, 'CLIENT', label, { pin: target.pin, host: target.name ?? target.host });
  }

  /**
   * A connection that holds a peer slot, from handshake to the end of its child (sessionEnded).
   * Nothing waits in between: a suspended async function per idle peer would cost its memory.
   */
  private serve(socket: TLSSocket, side: Side, remote: string, expectation: Expectation, proxied?: ProxiedEndpoints): void {
    this.admit(socket, side, remote, expectation, proxied).then(
      (session) => {
        if (!session) this.slots.release();
      },
      (error: unknown) => {
        // A fault of ours while admitting one peer ends that connection, not the daemon.
        this.options.log.error(`${remote}: ${reason(error)}, connection closed`);
        socket.destroy();
        this.slots.release();
      },
    );
  }

  private sessionEnded(session: Session): void {
    this.sessions.delete(session);
    this.slots.release();
    this.options.onPeerCount?.(this.peerCount);
    this.options.log.info(`${session.label}: session ended`);
    if (this.sessions.size === 0) this.lastSessionEnded?.();
  }

  /** Checks the peer and starts its session; undefined when it is turned away or tlsd is stopping. */
  private async admit(socket: TLSSocket, side: Side, remote: string, expectation: Expectation, proxied?: ProxiedEndpoints): Promise<Session | undefined> {
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
    this.sessions.set(session, { side, remote, sha256, alias: peer.alias });
    options.onPeerCount?.(this.peerCount);
    session.start();
    return session;
  }
}

interface PeerRow {
  side: Side;
  remote: string;
  sha256: string | undefined;
  alias: string | undefined;
}

/** A refused peer gets close_notify and a FIN, not a reset: its client reports a clean end. */
function closeGently(socket: TLSSocket): void {
  socket.resume(); // whatever it already sent is discarded, so the kernel has no reason to reset
  socket.end();
  setTimeout(() => socket.destroy(), REFUSED_LINGER_MS).unref();
}
