import { InvalidArgumentError, Option } from 'commander';
import { certificateFingerprint, keygen, KeygenError } from '../keygen/keygen.js';
import { defaultRsaBits, describeKey, keyTypes, maxRsaBits, minRsaBits, type KeySpec, type KeyType } from '../keygen/keys.js';
import { formatSubject, parseSubject, SubjectError, type SubjectAttribute } from '../keygen/subject.js';
import { absoluteName, tlsaRecord, TlsaError } from '../keygen/tlsa.js';
import { reason } from '../log/reason.js';
import { fail, startLogging } from './lifecycle.js';
import { createProgram, integerIn } from './program.js';

const makes = ['key', 'cert', 'type', 'bits', 'subject', 'days', 'force'];

const program = createProgram(
  'tlsd-keygen',
  '[option ...]',
  'Makes an identity for tlsd: a private key (mode 0600) and a self-signed certificate for it, and ' +
    'prints the certificate\'s SHA256 fingerprint on stdout, as tlsd shows it to peers. Existing files ' +
    'are left alone unless --force is given. With --fingerprint, prints the fingerprint of an ' +
    'existing certificate instead.',
)
  .option('-k, --key <keyfile>', 'private key file to write (PEM, mode 0600)', '/etc/tls/key.pem')
  .option('-c, --cert <certfile>', 'certificate file to write (PEM)', '/etc/tls/cert.pem')
  .addOption(new Option('-t, --type <type>', 'key type; ec is on the P-256 curve').choices(keyTypes).default('ec'))
  .option('-b, --bits <bits>', `RSA key size in bits, with -t rsa (default: ${defaultRsaBits})`, integerIn(minRsaBits, maxRsaBits))
  .addOption(
    new Option('-s, --subject <subject>', 'certificate subject: a common name, or /CN=name/O=organization as openssl writes it')
      .argParser(subjectOption)
      .default(parseSubject('tlsd'), 'tlsd'),
  )
  .option('-d, --days <days>', 'days the certificate is valid', integerIn(1, 36500), 3650)
  .option('-f, --force', 'replace existing key and certificate files')
  .option('--tlsa <host>', 'also print the DANE TLSA record of the certificate for <host> (with --port)', tlsaHostOption)
  .option('-p, --port <port>', 'the port of the --tlsa record', integerIn(1, 65535))
  .addOption(new Option('--fingerprint <certfile>', 'print the fingerprint of an existing certificate (PEM or DER); write nothing').conflicts(makes));

function subjectOption(value: string): SubjectAttribute[] {
  try {
    return parseSubject(value);
  } catch (error) {
    if (error instanceof SubjectError) throw new InvalidArgumentError(`${error.message}.`);
    throw error;
  }
}

function tlsaHostOption(value: string): string {
  try {
    absoluteName(value);
    return value;
  } catch (error) {
    if (error instanceof TlsaError) throw new InvalidArgumentError(`${error.message}.`);
    throw error;
  }
}

interface CliOptions {
  key: string;
  cert: string;
  type: KeyType;
  bits?: number;
  subject: SubjectAttribute[];
  days: number;
  force?: boolean;
  tlsa?: string;
  port?: number;
  fingerprint?: string;
}

program.parse();
const cli = program.opts<CliOptions>();
if (cli.bits !== undefined && cli.type !== 'rsa') program.error('error: option \'-b, --bits <bits>\' is for RSA keys: add -t rsa');
if ((cli.tlsa === undefined) !== (cli.port === undefined)) program.error('error: options \'--tlsa <host>\' and \'-p, --port <port>\' go together');
// Not a daemon: errors go to stderr (and syslog, as for the other programs); nothing else is logged.
const log = startLogging({ ident: 'tlsd-keygen' });

// A function, not top-level await: the bundle is CommonJS (scripts/bundle.mjs), which has none.
async function run(): Promise<void> {
  try {
    let fingerprint: string;
    if (cli.fingerprint !== undefined) {
      fingerprint = await certificateFingerprint(cli.fingerprint);
    } else {
      const key: KeySpec = { type: cli.type, bits: cli.bits };
      const made = await keygen({ key, subject: cli.subject, days: cli.days, keyFile: cli.key, certFile: cli.cert, force: cli.force === true });
      fingerprint = made.fingerprint;
      const until = made.notAfter.toISOString().replace('T', ' ').replace('.000Z', ' UTC');
      process.stderr.write(
        `tlsd-keygen: wrote key ${cli.key} (${describeKey(key)}, mode 0600) and certificate ${cli.cert} (${formatSubject(cli.subject)}, valid until ${until})\n`,
      );
    }
    // stdout carries only values, so that `fp=$(tlsd-keygen ...)` works.
    process.stdout.write(`${fingerprint}\n`);
    if (cli.tlsa !== undefined && cli.port !== undefined) process.stdout.write(`${tlsaRecord(cli.tlsa, cli.port, fingerprint)}\n`);
    log.close();
  } catch (error) {
    fail(log, error instanceof KeygenError ? error.message : reason(error));
  }
}

void run();
