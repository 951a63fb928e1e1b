/// <reference path="../../../src/os/posix-socket.d.ts" />
// posix-socket ships no types: tlsd declares the calls it uses, and so do we.
import { rmSync } from 'node:fs';
import PosixSocket from 'posix-socket';

const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

/** A syslog socket (unix datagram) bound at `path`, as /dev/log is; it reads only when asked. */
export class SyslogSocket {
  private readonly fd: number;
  private timer: NodeJS.Timeout | undefined;
  readonly records: string[] = [];

  constructor(readonly path: string) {
    this.fd = PosixSocket.socket(PosixSocket.AF_UNIX, PosixSocket.SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    PosixSocket.bind(this.fd, { sun_family: PosixSocket.AF_UNIX, sun_path: path });
  }

  /** Reads what is queued now; returns how many records came. */
  drain(): number {
    const buffer = new ArrayBuffer(65536);
    let count = 0;
    for (;;) {
      let size: number;
      try {
        size = PosixSocket.recv(this.fd, buffer, buffer.byteLength, PosixSocket.MSG_DONTWAIT);
      } catch {
        return count; // EAGAIN: nothing more queued
      }
      this.records.push(Buffer.from(buffer, 0, size).toString('utf8'));
      count++;
    }
  }

  /** Reads continuously, as a syslog daemon does. */
  follow(everyMs = 10): void {
    this.timer = setInterval(() => this.drain(), everyMs);
  }

  close(): void {
    clearInterval(this.timer);
    PosixSocket.close(this.fd);
    rmSync(this.path, { force: true });
  }
}
