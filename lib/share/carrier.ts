/**
 * What carries the sharing protocol's bytes between a server (server.ts) and its clients
 * (client.ts): a connection that moves an ordered, reliable stream of bytes with bounded sends and
 * receives, and a listener that hands out new connections. The Unix socket (link.ts) is one
 * carrier, SISCI data interrupts across a SmartIO cluster (sisci-link.ts) another; server.ts and
 * client.ts see only this, and protocol.ts's frames ride on either unchanged.
 */

/** Who is at the other end, as far as the carrier can tell. */
export interface PeerInfo {
  readonly pid: number;
  /**
   * The peer's uid, checked by the kernel (SO_PEERCRED), or undefined where the carrier cannot
   * know one (a process on another host of a SmartIO cluster): the server then serves it without
   * a uid check, and says so in its log.
   */
  readonly uid: number | undefined;
  /** Where the peer is, for logs ("node 8, interrupt 1025"); undefined on one host. */
  readonly where?: string;
}

/** One connection: an ordered byte stream with deadlines. Errors are ShareError ("server-gone", "timeout"). */
export interface ShareConnection {
  /** What the peer is reached as ("unix:/run/libnvm/x.sock", "smartio-rpc:80000"). */
  readonly address: string;
  readonly closed: boolean;
  /** Send every byte within `timeoutMs`: ShareError "server-gone" when the peer is gone, "timeout" when it does not take them. */
  send(bytes: Uint8Array, timeoutMs: number): void;
  /** send() with a descriptor attached; carriers that cannot pass descriptors throw UnsupportedError. */
  sendWithFd(bytes: Uint8Array, fd: number, timeoutMs: number): void;
  /** What arrived, waiting at most `timeoutUs` (0: only look), and descriptors that came with it; empty bytes when nothing did. */
  recvWithFds(timeoutUs?: number): { bytes: Uint8Array; fds: number[] };
  /** recvWithFds() without descriptors. */
  recv(timeoutUs: number): Uint8Array;
  close(): void;
  /** @internal For tests: vanish as a killed process would (no goodbye), where closing says one. */
  abandonForTests?(): void;
}

/** Where a server takes connections. accept() never blocks. */
export interface ShareListener {
  /** What clients open ("unix:PATH", "smartio-rpc:80000"). */
  readonly address: string;
  accept(): { conn: ShareConnection; peer: PeerInfo } | undefined;
  /** Stop taking connections and withdraw what clients find the server by (the socket file, the rendezvous slot). */
  close(): void;
  /** @internal For tests: vanish as a killed server would (nothing withdrawn). */
  abandonForTests?(): void;
}
