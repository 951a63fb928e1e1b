import { InvalidArgumentError } from 'commander';
import { Daemon } from '../daemon/daemon.js';
import { chooseIdentity } from '../daemon/default-identity.js';
import { handleSignals } from '../daemon/signals.js';
import { parseSignal } from '../daemon/signal-name.js';
import { reason } from '../reason.js';
import { createProgram, fail, integerIn, logOptions, startLogging, type LogChoices } from './program.js';

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
  .option('--max-peers <n>', 'most peers at once; more are refused, stdin lines wait', integerIn(1, 1_000_000), 64)
  .option('--max-handshakes <n>', 'most TLS handshakes in progress at once', integerIn(1, 1_000_000), 256)
  .option('--handshake-timeout <seconds>', 'seconds a TLS handshake may take', integerIn(1, 3600), 10)
  .argument('<command>', 'the program to run for each peer, found on PATH')
  .argument('[argument...]', "the program's arguments");

function signalOption(value: string): NodeJS.Signals {
  const signal = parseSignal(value);
  if (!signal) throw new InvalidArgumentError('not a signal name or number.');
  return signal;
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
  maxPeers: number;
  maxHandshakes: number;
  handshakeTimeout: number;
}

program.parse();
const cli = program.opts<CliOptions>();
const [command, args] = program.processedArgs as [string, string[]];
// A bug must still end in one log line and a status systemd can act on, never a stack trace.
const log = startLogging(cli);

try {
  const identity = await chooseIdentity({ keyFile: cli.key, certFile: cli.cert }, process.env);
  if (identity.created) log.info(`Created a new identity: ${identity.keyFile} and ${identity.certFile}`);
  const daemon = await Daemon.start({
    keyFile: identity.keyFile,
    certFile: identity.certFile,
    host: cli.bind,
    port: cli.port ?? 0,
    command,
    args,
    endSignal: cli.signal,
    requireCert: cli.requireCert,
    certDir: cli.certDir,
    caFile: cli.ca,
    aliasesFile: cli.aliases,
    maxPeers: cli.maxPeers,
    maxHandshakes: cli.maxHandshakes,
    handshakeTimeoutMs: cli.handshakeTimeout * 1000,
    dialInput: process.stdin,
    log,
  });
  handleSignals(daemon, (code) => process.exit(code));
} catch (error) {
  fail(log, reason(error));
}
