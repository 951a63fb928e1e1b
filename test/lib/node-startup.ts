import { spawnSync } from 'node:child_process';

/**
 * Whether this Node reads NODE_EXTRA_CA_CERTS before any script runs (Node 20) rather than once
 * `tls` is loaded (Node 22 and 24): only then does an empty script warn about a missing file.
 */
export const readsExtraCertsAtStartup: boolean = spawnSync(process.execPath, ['-e', ''], {
  env: { ...process.env, NODE_OPTIONS: '', NODE_EXTRA_CA_CERTS: '/nonexistent/tlsd-test-ca.pem' },
  encoding: 'utf8',
}).stderr.includes('Ignoring extra certs');
