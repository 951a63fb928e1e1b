/**
 * The launchers bin/fp2alias and bin/std2fifo start Node without NODE_EXTRA_CA_CERTS: Node 20 reads
 * every certificate in that file before it runs a line of a script (most of a helper's start:
 * docs/performance.md, "Start-up"), and these helpers make no TLS connections. bin/fp2alias keeps
 * the value in SAVED_VARIABLE; what fp2alias runs gets it back under its own name.
 */
const SAVED_VARIABLE = 'TLSD_SAVED_NODE_EXTRA_CA_CERTS';

/** The environment for a command a helper runs: as the helper got it before its launcher. */
export function commandEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { [SAVED_VARIABLE]: saved, ...rest } = env;
  return saved === undefined ? rest : { ...rest, NODE_EXTRA_CA_CERTS: saved };
}
