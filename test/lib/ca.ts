import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { opensslFingerprint, type TestIdentity } from './identity.js';

export interface TestCa {
  dir: string;
  key: string;
  cert: string;
}

/** A private CA made by openssl, as an organisation would make one. */
export function makeCa(dir: string, name: string): TestCa {
  const key = join(dir, `${name}-ca-key.pem`);
  const cert = join(dir, `${name}-ca.pem`);
  const openssl = ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert];
  execFileSync('openssl', [...openssl, '-days', '30', '-subj', `/CN=${name} CA`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'], { stdio: 'ignore' });
  return { dir, key, cert };
}

export interface IssueOptions {
  /** subjectAltName, e.g. `DNS:localhost,IP:127.0.0.1`. */
  san?: string;
  /** Valid only in 2020, so expired now. */
  expired?: boolean;
}

let serial = 0;

/** A certificate signed by `ca` (with `openssl ca`, which can backdate), and its new key. */
export function issue(ca: TestCa, dir: string, name: string, options: IssueOptions = {}): TestIdentity {
  serial += 1;
  const key = join(dir, `${name}-key.pem`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}-cert.pem`);
  const request = ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`];
  if (options.san) request.push('-addext', `subjectAltName=${options.san}`);
  execFileSync('openssl', request, { stdio: 'ignore' });
  const config = join(dir, `${name}-ca.cnf`);
  const database = join(dir, `${name}-index.txt`);
  writeFileSync(database, '');
  writeFileSync(
    config,
    [
      '[ca]',
      'default_ca = test',
      '[test]',
      `database = ${database}`,
      `new_certs_dir = ${dir}`,
      `serial = ${join(dir, `${name}-serial`)}`,
      'default_md = sha256',
      'policy = anything',
      'copy_extensions = copy',
      'unique_subject = no',
      '[anything]',
      'commonName = supplied',
      '',
    ].join('\n'),
  );
  writeFileSync(join(dir, `${name}-serial`), `${(1000 + serial).toString(16).padStart(4, '0')}\n`);
  const dates = options.expired ? ['-startdate', '20200101000000Z', '-enddate', '20200201000000Z'] : ['-days', '30'];
  execFileSync('openssl', ['ca', '-batch', '-notext', '-config', config, '-cert', ca.cert, '-keyfile', ca.key, '-in', csr, '-out', cert, ...dates], { stdio: 'ignore' });
  return { key, cert, fingerprint: opensslFingerprint(cert) };
}
