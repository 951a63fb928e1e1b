/** The variables of the socket-activation protocol (sd_listen_fds(3)). */
const ACTIVATION_VARIABLES = ['LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES'] as const;

/** systemd passes activated sockets from this descriptor on. */
const SD_LISTEN_FDS_START = 3;

/**
 * The listening sockets systemd passed to this process, if any, as sd_listen_fds(3) reads them:
 * `LISTEN_PID` must be our pid (the variables may be stale, inherited from a parent that was
 * activated) and `LISTEN_FDS` their count. The variables are removed from `env` either way, as
 * sd_listen_fds(unset_environment=1) does, so children never see them.
 */
export function takeActivatedSockets(env: NodeJS.ProcessEnv, pid: number): number[] | undefined {
  const { LISTEN_PID: forPid, LISTEN_FDS: count } = env;
  for (const name of ACTIVATION_VARIABLES) delete env[name];
  if (forPid === undefined || count === undefined || !/^\d+$/.test(forPid) || Number(forPid) !== pid) return undefined;
  if (!/^\d+$/.test(count) || Number(count) < 1) return undefined;
  return Array.from({ length: Number(count) }, (_, i) => SD_LISTEN_FDS_START + i);
}
