// posix-socket ships no types; these cover the calls tlsd makes.
declare module 'posix-socket' {
  interface UnixAddress {
    sun_family: number;
    sun_path: string;
  }
  const PosixSocket: {
    AF_UNIX: number;
    SOCK_DGRAM: number;
    MSG_DONTWAIT: number;
    MSG_NOSIGNAL: number;
    socket(domain: number, type: number, protocol: number): number;
    bind(fd: number, address: UnixAddress): void;
    connect(fd: number, address: UnixAddress): void;
    send(fd: number, buffer: ArrayBuffer, length: number, flags: number): number;
    sendto(fd: number, buffer: ArrayBuffer, length: number, flags: number, address: UnixAddress): number;
    recv(fd: number, buffer: ArrayBuffer, length: number, flags: number): number;
    close(fd: number): void;
  };
  export default PosixSocket;
}
