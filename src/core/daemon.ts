import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import type { Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { AliasBook } from './alias-book.js';
import { readDialLines } from './dial-lines.js';
import { loadIdentity, reloadWarnings, type Identity } from './identity.js';
import { Listener, type ListenerOptions } from './listener.js';
import { PeerService } from './peer-service.js';
import { PeerSlots } from './peer-slots.js';
import type { ProxyAddress } from '../input/proxy-url.js';
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

/** What a signal handler (service/signals.ts) asks of tlsd, whether one process or a primary with workers. */
export interface Service {
  /** The peers served (systemd's STATUS=). */
  readonly peerCount: number;
  /** SIGHUP: new key, certificate (and aliases) for new connections; on failure the old ones stay. */
  reload(): Promise<void>;
  /** SIGUSR1: the table of peers, in the log. */
  logStatus(): void;
  /** SIGTERM/SIGINT: resolves once every child is gone. */
  shutdown(): Promise<void>;
  /** A second signal: kill what is left. */
  kill(): void;
}

/** The tlsd core in one process: listens, dials, and runs one session per peer within the limits. */
export class Daemon implements Service {
  private readonly peers: PeerService<void>;
  private readonly slots: PeerSlots;
  private readonly listener: Listener;
  private stopping = false;
  private reloading: Promise<void> = Promise.resolve();
  /** Settles when the last session has ended, once shutdown has begun. */
  private drained: Promise<void> | undefined;

  private constructor(
    private readonly options: DaemonOptions,
    identity: Identity,
    private readonly aliases: AliasBook | undefined,
  ) {
    this.slots = new PeerSlots(options.maxPeers);
    this.peers = new PeerService<void>(
      {
        ...options,
        verifyChain: options.caFile !== undefined,
        aliases,
        activatedCount: options.activated?.length ?? 0,
        released: () => this.slots.release(),
      },
      identity,
    );
    this.listener = new Listener({
      ...listenerSettings(options, identity),
      refuse: () => this.refusal(),
      onSecure: (socket, remote, proxied) => {
        if (this.refusal() === undefined && this.slots.tryAcquire()) this.peers.serve(socket, 'SERVER', remote, {}, undefined, proxied);
        else this.listener.turnAway(socket, remote, this.refusal() ?? 'peer limit reached');
      },
    });
  }

  /** Loads the identity and starts listening; rejects with a one-line reason. */
  static async start(options: DaemonOptions): Promise<Daemon> {
    const identity = await loadIdentity(options);
    const aliases = openAliases(options);
    const daemon = new Daemon(options, identity, aliases);
    let addresses: AddressInfo[];
    try {
      addresses = await daemon.listener.listen();
      options.beforeServing?.();
    } catch (error) {
      aliases?.close();
      throw error;
    }
    await daemon.peers.ready();
    announceListening(options, addresses);
    logStartup(options, identity, aliases);
    if (options.dialInput) daemon.readStdin(options.dialInput);
    return daemon;
  }

  get peerCount(): number {
    return this.peers.peerCount;
  }

  logStatus(): void {
    for (const line of this.statusLines()) this.options.log.notice(line);
  }

  statusLines(now = Date.now()): string[] {
    return [statusHeader(this.peerCount, this.listener.pendingHandshakes), ...this.peers.statusRows(now)];
  }

  reload(): Promise<void> {
    this.reloading = this.reloading.then(async () => {
      const identity = await reloadIdentity(this.options, this.peers.identity, this.aliases);
      if (identity === this.peers.identity) return;
      this.peers.identity = identity;
      this.listener.setCredentials(identity.options);
    });
    return this.reloading;
  }

  /**
   * Stop accepting and dialing, let every child see EOF (and the -s signal), deliver what they
   * still write, and resolve once all of them are gone. Each child still running is named as it
   * is told (Session's `Waiting for process N to exit`).
   */
  shutdown(): Promise<void> {
    if (this.drained) return this.drained;
    this.stopping = true;
    stopTakingPeers(this.options, this.listener, this.slots);
    this.drained = this.peers.endAll();
    return this.drained;
  }

  kill(): void {
    this.options.log.notice(`Killing ${this.peers.peerCount} remaining session(s)`);
    this.peers.killAll();
  }

  private refusal(): string | undefined {
    return refusal(this.stopping, this.slots);
  }

  private readStdin(input: Readable): void {
    void readDialLines({ input, slots: this.slots, log: this.options.log, stopping: () => this.stopping, dial: (target) => void this.peers.dialAndServe(target, undefined) });
  }
}

/** Shutdown's first step, in one process or in the primary: nothing new is accepted or dialed. */
export function stopTakingPeers(options: DaemonOptions, listener: Listener, slots: PeerSlots): void {
  options.log.info('Terminating gracefully');
  listener.close();
  options.dialInput?.destroy();
  slots.close();
}

/** Why a new peer is turned away now, in one process or in the primary; undefined when it is not. */
export function refusal(stopping: boolean, slots: PeerSlots): string | undefined {
  if (stopping) return 'shutting down';
  if (slots.taken >= slots.max) return `peer limit reached (${slots.max})`;
  return undefined;
}

/** What the Listener is given from the daemon's options. */
export function listenerSettings(options: DaemonOptions, identity: Identity): Omit<ListenerOptions, 'refuse' | 'onSecure' | 'handOff'> {
  const { host, port, activated, maxPerAddress, trustedProxies, handshakeTimeoutMs, maxHandshakes, log } = options;
  return { host, port, activated, maxPerAddress, trustedProxies, credentials: identity.options, handshakeTimeoutMs, maxHandshakes, log };
}

/** --aliases, read for the first time; undefined without it. */
export function openAliases(options: DaemonOptions): AliasBook | undefined {
  return options.aliasesFile === undefined ? undefined : AliasBook.open(options.aliasesFile, options.log);
}

/** The original's `Listening on` lines, one per address served. */
export function announceListening(options: DaemonOptions, addresses: readonly AddressInfo[]): void {
  for (const address of addresses) options.log.announce('info', `Listening on ${address.address}, port ${address.port}`);
}

/** What start-up tells once serving: our fingerprint, and any warnings about what was loaded. */
export function logStartup(options: DaemonOptions, identity: Identity, aliases: AliasBook | undefined): void {
  const { log } = options;
  log.info(`Our certificate's SHA256: ${identity.fingerprint}`);
  if (identity.exposure) log.warning(identity.exposure);
  for (const warning of reloadWarnings(options)) log.warning(warning);
  if (aliases) log.info(`Serving the ${aliases.size} peers listed in ${aliases.file}`);
  if (options.trustedProxies) log.info(`Reading PROXY headers from ${options.trustedProxies.entries.join(', ')}, and only from there`);
}

/** SIGUSR1's first line. */
export function statusHeader(peers: number, handshakes: number): string {
  return `Status: ${peers} peer(s), ${handshakes} handshake(s) in progress`;
}

/**
 * A reload's reading of the files, logged: the new identity, or `current` when they cannot be
 * used (the original's words; where it then exited, we go on with what was loaded before).
 */
export async function reloadIdentity(options: DaemonOptions, current: Identity, aliases?: AliasBook): Promise<Identity> {
  const { log } = options;
  log.info('Reloading key and certificate');
  aliases?.reload();
  try {
    const identity = await loadIdentity(options);
    log.notice(`Reloaded key and certificate, SHA256 ${identity.fingerprint}`);
    if (identity.exposure) log.warning(identity.exposure);
    return identity;
  } catch (error) {
    log.error(`Failed to load key or certificate: ${reason(error)}`);
    log.notice(`Kept the old key and certificate, SHA256 ${current.fingerprint}`);
    return current;
  }
}
