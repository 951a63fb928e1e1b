import { InvalidArgumentError } from 'commander';
import { takeActivatedSockets } from '../service/activation.js';
import { closeInheritedDescriptors } from '../os/inherited-descriptors.js';
import { availableParallelism } from 'node:os';
import { Daemon, type DaemonOptions, type Service } from '../core/daemon.js';
import { Primary } from '../workers/primary.js';
import { runWorker, WORKER_MARK } from '../workers/worker.js';
import { chooseIdentity } from '../service/default-identity.js';
import { Notifier, peerStatus } from '../service/notify.js';
import { dropPrivileges, resolvePrivileges } from '../service/privileges.js';
import { chooseProxy, parseProxyAddress, type ProxyAddress } from '../input/proxy-url.js';
import { handleSignals } from '../service/signals.js';
import { TrustedProxies } from '../core/trusted-proxies.js';
import { chooseSpawner } from '../launch/spawn-helper.js';
import { parseSignal } from '../os/signal-names.js';
import { reason } from '../log/reason.js';
import { fail, startLogging } from './lifecycle.js';
import type { LogChoices } from './option-spec.js';
import type { Logger } from '../log/logger.js';
import { createProgram, integerIn, logOptions } from './program.js';

const program = logOptions(
  createProgram(
    'tlsd',
    '[option ...] [--] <command> [argument ...]',
    'A TLS super-server: accepts TLS connections (and opens them to "host port" lines read on stdin), ' +
      "runs <command> once per peer with SHA256 (the peer certificate's fingerprint) and SIDE in its " +
      "environment, and connects the child's stdin and stdout to the peer.",
  )
    .option('-k, --key <keyfile>', 'private key file (default: /etc/tls/key.pem, else one made in ~/.config/tlsd)')
    .option('-c, --cert <certfile>', 'certificate file (default: /etc/tls/cert.pem, else one made in ~/.config/tlsd)')
    .option('-p, --port <port>', 'port to listen on (default: a random one)', integerIn(0, 65535))
    .option('-b, --bind <host>', 'bind address (IPv4 or IPv6)', '0.0.0.0')
    .option('-s, --signal <signo>', 'signal (number or name) to send a child when its connection ends', signalOption)
    .option('-n, --no-require-cert', 'do not require a peer certificate (SHA256 is then unset)')
    .option('-d, --cert-dir <directory>', 'write peer certificates (DER) into this directory'),
  'tlsd',
)
  .option('--aliases <file>', 'serve only the peers listed in this fp2alias file, with ALIAS set')
  .option('--ca <file>', 'verify peer certificates against this CA bundle (and server names when dialing)')
  .option('--socks <host:port>', 'dial through this SOCKS5 proxy, names resolved by it (default: ALL_PROXY if socks5h://)', socksOption)
  .option('--max-peers <n>', 'most peers at once; more are refused, stdin lines wait', integerIn(1, 1_000_000), 64)
  .option('--max-per-ip <n>', 'most connections from one address (an IPv6 /64) at once (default: no limit)', integerIn(1, 1_000_000))
  .option('--accept-proxy <addresses>', "read a PROXY protocol header (HAProxy's send-proxy-v2) from these balancer addresses and CIDR ranges, comma-separated; required from them, refused from others", acceptProxyOption)
  .option('--max-handshakes <n>', 'most TLS handshakes in progress at once, shared fairly between addresses', integerIn(1, 1_000_000), 256)
  .option('--handshake-timeout <seconds>', 'seconds a TLS handshake may take', integerIn(1, 3600), 10)
  .option('--workers <n>', 'worker processes serving connections, or auto: one per CPU; limits, dial lines and signals stay those of one daemon', workersOption, 1)
  .option('--user <user>', 'after binding and reading the key, run as this user (children too)')
  .option('--group <group>', "and this group (default: the user's own)")
  .argument('<command>', 'the program to run for each peer, found on PATH')
  .argument('[argument...]', "the program's arguments");

function signalOption(value: string): NodeJS.Signals {
  const signal = parseSignal(value);
  if (!signal) throw new InvalidArgumentError('not a signal name or number.');
  return signal;
}

function workersOption(value: string): number {
  return value === 'auto' ? availableParallelism() : integerIn(1, 1024)(value);
}

function acceptProxyOption(value: string, previous: TrustedProxies | undefined): TrustedProxies {
  const parsed = TrustedProxies.parse(value);
  if ('error' in parsed) throw new InvalidArgumentError(`${parsed.error}.`);
  return previous ? previous.with(parsed) : parsed;
}

function socksOption(value: string): ProxyAddress {
  const proxy = parseProxyAddress(value);
  if (!proxy) throw new InvalidArgumentError('expected HOST:PORT or [IPv6]:PORT.');
  return proxy;
}

interface CliOptions extends LogChoices {
  key?: string;
  cert?: string;
  port?: number;
  bind: string;
  signal?: NodeJS.Signals;
  requireCert: boolean;
  certDir?: string;
  aliases?: string;
  ca?: string;
  socks?: ProxyAddress;
  maxPeers: number;
  maxPerIp?: number;
  acceptProxy?: TrustedProxies;
  maxHandshakes: number;
  user?: string;
  group?: string;
  handshakeTimeout: number;
  workers: number;
}

// A function, not top-level await: the bundle is CommonJS (scripts/bundle.mjs), which has none.
async function start(cli: CliOptions, command: string, args: string[], log: Logger, environment: NodeJS.ProcessEnv, activated: number[] | undefined, notifier: Notifier): Promise<void> {
  try {
    const becomes = resolvePrivileges({ user: cli.user, group: cli.group });
    const identity = await chooseIdentity({ keyFile: cli.key, certFile: cli.cert }, environment);
    if (identity.created) log.notice(`Created a new identity: ${identity.keyFile} and ${identity.certFile}`);
    const proxy = chooseProxy(cli.socks, environment);
    if (proxy.ignored) log.warning(`Ignoring ${proxy.ignored}`);
    const options: DaemonOptions = {
      keyFile: identity.keyFile,
      certFile: identity.certFile,
      host: cli.bind,
      port: cli.port ?? 0,
      activated,
      command,
      args,
      endSignal: cli.signal,
      requireCert: cli.requireCert,
      certDir: cli.certDir,
      caFile: cli.ca,
      aliasesFile: cli.aliases,
      proxy: proxy.proxy,
      maxPeers: cli.maxPeers,
      maxPerAddress: cli.maxPerIp,
      trustedProxies: cli.acceptProxy,
      maxHandshakes: cli.maxHandshakes,
      handshakeTimeoutMs: cli.handshakeTimeout * 1000,
      spawnHelper: chooseSpawner(environment),
      dialInput: process.stdin,
      environment,
      onPeerCount: (count) => notifier.status(peerStatus(count)),
      beforeServing: () => dropPrivileges(becomes),
      log,
    };
    let service: Service;
    if (cli.workers > 1) {
      // Keep-alives only once every worker is up: not while they start, nor while one is replaced.
      let primary: Primary | undefined;
      notifier.keepAliveWhile(() => primary?.healthy === true);
      primary = await Primary.start(options, { count: cli.workers, program: process.argv[1] ?? '', log: { ident: cli.ident, stderr: cli.stderr === true, syslogPath: environment.TLSD_SYSLOG_SOCKET } });
      service = primary;
    } else service = await Daemon.start(options);
    log.release();
    handleSignals(service, notifier, log, (code) => process.exit(code));
    notifier.ready(peerStatus(0));
  } catch (error) {
    fail(log, reason(error));
  }
}

/** The tlsd a user started: parses, then starts serving (as one process, or the primary of workers). */
function main(): void {
  program.parse();
  const cli = program.opts<CliOptions>();
  const [command, args] = program.processedArgs as [string, string[]];
  // A bug must still end in one log line and a status systemd can act on, never a stack trace.
  const log = startLogging(cli);
  // The original's first line; what else start-up logs waits until Daemon.start has said where it
  // listens, so that a script reading the first three lines (as the original's own test does) sees
  // the original's three.
  log.announce('debug', 'Initializing');
  log.hold();

  // Read before anything can spawn: children must not inherit systemd's variables or sockets,
  // nor any other descriptor tlsd's parent left open.
  const activated = takeActivatedSockets(process.env, process.pid);
  closeInheritedDescriptors(activated ?? []);
  const notifier = new Notifier(process.env, process.pid, log);
  // tlsd's environment, made once systemd's variables are out of it: what start-up reads from here
  // on, and what children inherit. The daemon is given it and reads no other.
  const environment = { ...process.env };
  void start(cli, command, args, log, environment, activated, notifier);
}

// A worker is this same program, forked by the primary with WORKER_MARK in its environment (and
// an IPC channel, without which the mark means nothing).
if (process.env[WORKER_MARK] === '1' && process.send !== undefined) runWorker();
else main();
