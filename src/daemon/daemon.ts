import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { quote, type Logger } from '../logger.js';
import { reason } from '../reason.js';
import { saveCertificate } from './cert-dir.js';
import { parseDialLine, type DialTarget } from './dial-line.js';
import { dial } from './dialer.js';
import { fingerprint } from './fingerprint.js';
import { loadIdentity, type Identity } from './identity.js';
import { readLines } from './line-reader.js';
import { formatAddress, Listener } from './listener.js';
import { PeerTable } from './peer-table.js';
import { Session } from './session.js';

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
  maxPeers: number;
  maxHandshakes: number;
  handshakeTimeoutMs: number;
  /** `host port` lines to dial; none when undefined. */
  dialInput: Readable | undefined;
  log: Logger;
}

export type Side = 'SERVER' | 'CLIENT';

/** Longer stdin lines are reported and skipped: a host name and a port never need this much. */
const MAX_LINE_BYTES = 4096;

/** The tlsd core: listens, dials, and runs one session per peer within the limits. */
export class Daemon {
  private readonly sessions = new Set<Session>();
  private readonly peers: PeerTable;
  private readonly listener: Listener;
  private stopping = false;
  private reloading: Promise<void> = Promise.resolve();

  private constructor(
    private readonly options: DaemonOptions,
    private identity: Identity,
  ) {
    this.peers = new PeerTable(options.maxPeers);
    this.listener = new Listener({
      host: options.host,
      port: options.port,
      credentials: identity.options,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      maxHandshakes: options.maxHandshakes,
      log: options.log,
      refuse: () => this.refusal(),
      onSecure: (socket, remote) => {
        if (this.refusal() === undefined && this.peers.tryAcquire()) void this.serve(socket, 'SERVER', remote);
        else this.turnAway(socket, remote, this.refusal() ?? 'peer limit reached');
      },
    });
  }

  /** Loads the identity and starts listening; rejects with a one-line reason. */
  static async start(options: DaemonOptions): Promise<Daemon> {
    const identity = await loadIdentity(options.keyFile, options.certFile);
    const daemon = new Daemon(options, identity);
    const address = await daemon.listener.listen();
    options.log.notice(`Listening on ${address.address}, port ${address.port}`);
    options.log.info(`Our certificate's SHA256: ${identity.fingerprint}`);
    if (options.dialInput) void daemon.readDialLines(options.dialInput);
    return daemon;
  }

  get peerCount(): number {
    return this.peers.size;
  }

  /** SIGHUP: new key and certificate for new connections; on failure the old ones stay. */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(async () => {
      const { keyFile, certFile, log } = this.options;
      try {
        this.identity = await loadIdentity(keyFile, certFile);
        this.listener.setCredentials(this.identity.options);
        log.notice(`Reloaded key and certificate, SHA256 ${this.identity.fingerprint}`);
      } catch (error) {
        log.error(`Reload failed, keeping the old key and certificate: ${reason(error)}`);
      }
    });
    return this.reloading;
  }

  /**
   * SIGTERM/SIGINT: stop accepting and dialing, let every child see EOF (and the -s signal),
   * deliver what they still write, and resolve once all of them are gone.
   */
  async shutdown(): Promise<void> {
    this.stopping = true;
    this.listener.close();
    this.options.dialInput?.destroy();
    this.peers.close();
    const count = this.sessions.size;
    this.options.log.notice(count > 0 ? `Shutting down, waiting for ${count} child${count === 1 ? '' : 'ren'}` : 'Shutting down');
    for (const session of this.sessions) session.end();
    await Promise.all([...this.sessions].map((session) => session.done));
  }

  /** A second signal: kill what is left. */
  kill(): void {
    this.options.log.notice(`Killing ${this.sessions.size} remaining session(s)`);
    for (const session of this.sessions) session.kill();
  }

  private refusal(): string | undefined {
    if (this.stopping) return 'shutting down';
    if (this.peers.size >= this.peers.max) return `peer limit reached (${this.peers.max})`;
    return undefined;
  }

  private turnAway(socket: TLSSocket, remote: string, why: string): void {
    this.options.log.warning(`${remote}: connection refused: ${why}`);
    socket.destroy();
  }

  private async readDialLines(input: Readable): Promise<void> {
    const { log } = this.options;
    try {
      for await (const item of readLines(input, MAX_LINE_BYTES)) {
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
        if (!(await this.peers.acquire())) break;
        void this.dialAndServe(parsed.target);
      }
    } catch (error) {
      if (!this.stopping) log.error(`Cannot read stdin: ${reason(error)}`);
    }
  }

  private async dialAndServe(target: DialTarget): Promise<void> {
    const label = formatAddress(target.host, target.port);
    const { log, handshakeTimeoutMs } = this.options;
    log.info(`Connecting to ${label}`);
    let socket: TLSSocket;
    try {
      socket = await dial(target, this.identity.context, handshakeTimeoutMs);
    } catch (error) {
      log.warning(`Cannot connect to ${label}: ${reason(error)}`);
      this.peers.release();
      return;
    }
    await this.serve(socket, 'CLIENT', label);
  }

  /** A connection that holds a peer slot, from handshake to the end of its child. */
  private async serve(socket: TLSSocket, side: Side, remote: string): Promise<void> {
    const { options } = this;
    const { log } = options;
    socket.on('error', () => {}); // until the session takes over; it logs errors itself
    const certificate = socket.getPeerX509Certificate();
    if (!certificate && options.requireCert) {
      log.warning(`${remote}: no certificate presented, connection closed`);
      socket.destroy();
      this.peers.release();
      return;
    }
    const sha256 = certificate ? fingerprint(certificate.raw) : undefined;
    log.info(`${remote}: connected as ${side}, peer SHA256 ${sha256 ?? '(none)'}`);
    if (options.certDir && certificate && sha256) {
      const failure = await saveCertificate(options.certDir, sha256, certificate.raw);
      if (failure) log.warning(`${remote}: cannot save the certificate in ${options.certDir}: ${reason(failure)}`);
    }
    if (this.stopping || socket.destroyed) {
      socket.destroy();
      this.peers.release();
      return;
    }
    const env: NodeJS.ProcessEnv = { ...process.env, SIDE: side };
    // With -n and no certificate, a SHA256 inherited from our own environment would lie.
    if (sha256) env.SHA256 = sha256;
    else delete env.SHA256;
    const session = new Session(socket, {
      command: options.command,
      args: options.args,
      env,
      endSignal: options.endSignal,
      log,
      label: remote,
    });
    this.sessions.add(session);
    session.start();
    await session.done;
    this.sessions.delete(session);
    this.peers.release();
    log.info(`${remote}: session ended`);
  }
}
