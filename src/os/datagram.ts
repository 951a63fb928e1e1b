import type PosixSocketModule from 'posix-socket';
import { errnoOf } from './errno.js';
import { lazyModule } from './lazy-module.js';

// Linux values; posix-socket does not export them. CLOEXEC keeps the socket out of children,
// NONBLOCK (with MSG_DONTWAIT) keeps a stuck reader from ever blocking the event loop.
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

// Loaded on the first send: the native addon costs every process that imports the logger a few
// milliseconds, and fp2alias (run once per connection) logs nothing for a known peer.
const posixSocket = lazyModule<typeof PosixSocketModule>('posix-socket');

/** An unbound unix datagram socket that sends to one path and never blocks. */
export class UnixDatagramSender {
  private fd: number | undefined;

  constructor(readonly path: string) {}

  /** Sends one datagram; returns the error code ('ENOENT', 'EAGAIN', ...) rather than throwing. */
  send(message: Buffer): string | undefined {
    try {
      const PosixSocket = posixSocket();
      this.fd ??= PosixSocket.socket(PosixSocket.AF_UNIX, PosixSocket.SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      const bytes = message.buffer.slice(message.byteOffset, message.byteOffset + message.length) as ArrayBuffer;
      PosixSocket.sendto(this.fd, bytes, message.length, PosixSocket.MSG_DONTWAIT | PosixSocket.MSG_NOSIGNAL, {
        sun_family: PosixSocket.AF_UNIX,
        sun_path: this.path,
      });
      return undefined;
    } catch (error) {
      return errnoOf(error) ?? String(error);
    }
  }

  close(): void {
    if (this.fd !== undefined) posixSocket().close(this.fd);
    this.fd = undefined;
  }
}
