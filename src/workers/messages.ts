import type { DialTarget } from '../input/dial-line.js';
import type { ProxiedEndpoints } from '../input/proxy-header.js';
import type { ProxyAddress } from '../input/proxy-url.js';

/**
 * What the primary and a worker say to each other. The channel is the socket pair Node's fork made
 * between the two (descriptor NODE_CHANNEL_FD in the worker): it has no name in any namespace, so no
 * other process can connect to it, and only these two processes hold its ends (the worker's
 * children do not: tlsd's spawn helper closes every descriptor above 2 in a child, and Node's spawn
 * opens the channel close-on-exec). Connection ids are the primary's, one per connection it handed
 * out or dial line it gave.
 */

/** Key, certificate and CA bundle as read by the primary (PEM text): a worker reads no key file. */
export interface Credentials {
  key: string;
  cert: string;
  ca?: string;
}

/** How a worker serves: the primary's options that a session needs. */
export interface WorkerConfig {
  /** 1..n: the worker's place, which its log lines name (`worker N: `). */
  index: number;
  credentials: Credentials;
  command: string;
  args: string[];
  endSignal?: NodeJS.Signals;
  requireCert: boolean;
  certDir?: string;
  aliasesFile?: string;
  proxy?: ProxyAddress;
  handshakeTimeoutMs: number;
  spawnHelper?: string;
  /** The environment children inherit: the primary's, systemd's variables taken out. */
  environment: Record<string, string>;
  log: { ident: string; stderr: boolean; syslogPath?: string };
}

export type ToWorker =
  | { t: 'config'; config: WorkerConfig }
  /**
   * A connection admitted by the primary, its descriptor with the message; `rest`: bytes read after
   * a PROXY header (base64). `granted`: its peer slot comes with it, so its session starts as soon
   * as its handshake is done. `track`: the primary counts it until it closes (--max-per-ip), so its
   * close is to be told even after the handshake.
   */
  | { t: 'connection'; id: number; remote: string; proxied?: ProxiedEndpoints; rest?: string; granted: boolean; track: boolean }
  /** The handshake is done and the peer has a slot: check it and start its session. */
  | { t: 'serve'; id: number }
  /** Close it: evicted, past its deadline, or refused by a limit (the primary logged why). */
  | { t: 'drop'; id: number }
  /** Dial this target; its peer slot is taken. */
  | { t: 'dial'; id: number; target: DialTarget }
  /** SIGHUP: the aliases file again, and the new credentials when the primary could read them. */
  | { t: 'reload'; credentials?: Credentials }
  | { t: 'status'; request: number }
  | { t: 'shutdown' }
  | { t: 'kill' };

/** A worker sends what it has to say in one turn of its event loop as one array of these. */
export type FromWorker =
  /** Serving: credentials loaded, the spawn helper up. */
  | { t: 'ready' }
  /** The connection's handshake is done: unless its slot was granted, it asks for one (answered `serve` or `drop`). */
  | { t: 'secure'; id: number }
  | { t: 'failed'; id: number; why: string }
  /** The connection is closed (told only before its handshake ended, when tracked, or when dropped). */
  | { t: 'closed'; id: number }
  /** Its peer slot is free: the session ended, or none was started. */
  | { t: 'released'; id: number }
  | { t: 'peers'; count: number }
  | { t: 'reloaded' }
  | { t: 'status'; request: number; rows: string[] };
