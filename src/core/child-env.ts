import type { TLSSocket } from 'node:tls';
import type { PeerIdentity } from './peer-check.js';
import type { PeerNames } from './peer-names.js';
import type { ProxiedEndpoints } from '../input/proxy-header.js';
import type { Side } from './side.js';
import type { Environment } from '../launch/launch.js';

/**
 * Every variable that describes a connection. None is ever inherited from tlsd's own environment:
 * a value the connection does not give is absent, so a child never mistakes stale identity for
 * its peer's. The ucspi-tcp and s6-tlsserver names let their scripts run under tlsd unchanged.
 */
const CONNECTION_VARIABLES = [
  'SIDE',
  'SHA256',
  'ALIAS',
  'PROTO',
  'TCPREMOTEIP',
  'TCPREMOTEPORT',
  'TCPLOCALIP',
  'TCPLOCALPORT',
  'PROXYREMOTEIP',
  'PROXYREMOTEPORT',
  'PROXYLOCALIP',
  'PROXYLOCALPORT',
  'TCPREMOTEHOST',
  'TCPREMOTEINFO',
  'TCPLOCALHOST',
  'SSL_PROTOCOL',
  'SSL_CIPHER',
  'SSL_TLS_SNI_SERVERNAME',
  'SSL_PEER_CERT_HASH',
  'SSL_PEER_CERT_SUBJECT',
] as const;

export interface ChildConnection extends PeerNames {
  side: Side;
  peer: PeerIdentity;
  /** The client's connection to a balancer, from its PROXY header (--accept-proxy). */
  proxied?: ProxiedEndpoints;
}

/**
 * What every child inherits: tlsd's environment without any connection variable. Taken once at
 * start (tlsd never changes its environment), not per child.
 */
export function baseEnvironment(env: Readonly<NodeJS.ProcessEnv>): Environment {
  const base: Environment = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined) base[name] = value;
  for (const name of CONNECTION_VARIABLES) delete base[name];
  return base;
}

/** This connection's variables; a child's environment is the base environment plus these. */
export function connectionEnvironment(socket: TLSSocket, connection: ChildConnection): Environment {
  const env: Environment = {};
  const set = (name: (typeof CONNECTION_VARIABLES)[number], value: string | number | undefined): void => {
    if (value !== undefined && value !== '') env[name] = String(value);
  };
  const { peer } = connection;
  set('SIDE', connection.side);
  set('SHA256', peer.sha256);
  set('ALIAS', peer.alias);
  set('PROTO', 'TCP');
  // Behind a balancer, TCP* describe the client's connection, as s6-networking's proxy-server
  // sets them from the same header; PROXY* the connection tlsd accepted, from the balancer.
  const { proxied } = connection;
  set('TCPREMOTEIP', plainAddress(proxied ? proxied.source.address : socket.remoteAddress));
  set('TCPREMOTEPORT', proxied ? proxied.source.port : socket.remotePort);
  set('TCPLOCALIP', plainAddress(proxied ? proxied.destination.address : socket.localAddress));
  set('TCPLOCALPORT', proxied ? proxied.destination.port : socket.localPort);
  if (proxied) {
    set('PROXYREMOTEIP', plainAddress(socket.remoteAddress));
    set('PROXYREMOTEPORT', socket.remotePort);
    set('PROXYLOCALIP', plainAddress(socket.localAddress));
    set('PROXYLOCALPORT', socket.localPort);
  }
  set('SSL_PROTOCOL', socket.getProtocol() ?? undefined);
  set('SSL_CIPHER', socket.getCipher()?.name);
  set('SSL_TLS_SNI_SERVERNAME', connection.serverName);
  set('SSL_PEER_CERT_HASH', peer.sha256 && `SHA256:${peer.sha256}`);
  set('SSL_PEER_CERT_SUBJECT', connection.subject);
  return env;
}

/** IPv4 peers of a dual-stack listener appear as ::ffff:a.b.c.d; scripts expect a.b.c.d. */
function plainAddress(address: string | undefined): string | undefined {
  return address?.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
}
