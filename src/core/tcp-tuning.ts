import type { Socket } from 'node:net';

/**
 * Every TCP connection tlsd makes or accepts. No Nagle delay: the protocols on top are often
 * line-at-a-time chats. Keepalive after a minute of silence: an idle peer that vanished without a
 * FIN (a crashed host, a dropped NAT entry) would otherwise hold its session and child for ever.
 */
export const TCP_TUNING = { noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 } as const;

/** Applies TCP_TUNING to a socket made by connect(); the listener passes it to createServer. */
export function tuneTcp(socket: Socket): void {
  socket.setNoDelay(TCP_TUNING.noDelay);
  socket.setKeepAlive(TCP_TUNING.keepAlive, TCP_TUNING.keepAliveInitialDelay);
}
