/**
 * The Unix socket under the sharing protocol: connect, listen, accept with the peer's
 * credentials (SO_PEERCRED), and bounded send and receive, through c/src/unix.c (Bun's sockets
 * are asynchronous and do not tell the peer's uid). Frames are protocol.ts's; this file only
 * moves bytes: the carrier (carrier.ts) of one host.
 */
import { ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import { unlinkSync } from "node:fs";
import { ShareError } from "../errors.ts";
import { checkPtr, cstr, errnoName, native } from "../native.ts";
import type { ShareConnection, ShareListener } from "./carrier.ts";

/** Bytes one receive reads at most. */
const RECV_CHUNK = 64 * 1024;
const ENOTCONN = 107;
const EAGAIN = 11;
/** Descriptors one receive takes at most. */
const MAX_FDS = 8;

export interface PeerCred {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/** "unix:PATH" → PATH; undefined for anything else. */
export function unixPath(target: string): string | undefined {
  const m = /^unix:(.+)$/.exec(target);
  return m ? m[1]! : undefined;
}

/** One connected stream socket with a C-owned receive buffer. */
export class UnixConnection implements ShareConnection {
  readonly fd: number;
  readonly address: string;
  #rx: Pointer | undefined;
  #rxView: Uint8Array | undefined;
  #fdsPtr: Pointer | undefined;
  #fds: Int32Array | undefined;
  #closed = false;

  constructor(fd: number, address: string) {
    this.fd = fd;
    this.address = address;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Send every byte within `timeoutMs`; ShareError "server-gone" when the peer is gone, "timeout" when it does not read. */
  send(bytes: Uint8Array, timeoutMs: number): void {
    if (this.#closed) throw new ShareError(`${this.address}: the connection is closed`, "server-gone", this.address);
    const r = native().nvm_unix_send(this.fd, ptr(bytes), bytes.length, Math.max(1, Math.ceil(timeoutMs)));
    if (r === 0) return;
    const errno = -r;
    if (errno === 110) throw new ShareError(`${this.address}: the peer did not take a message within ${timeoutMs} ms`, "timeout", this.address);
    throw new ShareError(`${this.address}: sending failed (${errnoName(errno)}): the peer closed the connection or died`, "server-gone", this.address);
  }

  /** send() with descriptor `fd` attached (SCM_RIGHTS): the peer gets its own copy of it. */
  sendWithFd(bytes: Uint8Array, fd: number, timeoutMs: number): void {
    if (this.#closed) throw new ShareError(`${this.address}: the connection is closed`, "server-gone", this.address);
    const r = native().nvm_unix_send_fd(this.fd, ptr(bytes), bytes.length, fd, Math.max(1, Math.ceil(timeoutMs)));
    if (r === 0) return;
    const errno = -r;
    if (errno === 110) throw new ShareError(`${this.address}: the peer did not take a message within ${timeoutMs} ms`, "timeout", this.address);
    throw new ShareError(`${this.address}: sending failed (${errnoName(errno)}): the peer closed the connection or died`, "server-gone", this.address);
  }

  /**
   * What arrived, waiting at most `timeoutUs` (0: only look), and the descriptors that came with it
   * (the caller owns them): empty bytes when nothing did. ShareError "server-gone" when the peer
   * closed the connection.
   */
  recvWithFds(timeoutUs = 0): { bytes: Uint8Array; fds: number[] } {
    if (this.#closed) throw new ShareError(`${this.address}: the connection is closed`, "server-gone", this.address);
    this.#ensureRx();
    const n = native();
    const r = n.nvm_unix_recv_fds(this.fd, this.#rx!, RECV_CHUNK, this.#fdsPtr!, MAX_FDS, Math.max(0, Math.floor(timeoutUs)));
    const fds: number[] = [];
    for (let i = 0; i < this.#fds![0]!; i++) fds.push(this.#fds![1 + i]!);
    if (r > 0) return { bytes: this.#rxView!.slice(0, r), fds };
    if (r === 0) return { bytes: new Uint8Array(0), fds };
    for (const fd of fds) n.nvm_unix_close(fd);
    throw new ShareError(
      -r === ENOTCONN ? `${this.address}: the peer closed the connection (it exited or died)` : `${this.address}: receiving failed (${errnoName(-r)})`,
      "server-gone",
      this.address,
    );
  }

  #ensureRx(): void {
    if (this.#rx) return;
    this.#rx = checkPtr(native().nvm_host_alloc(RECV_CHUNK + 4 * (MAX_FDS + 1)), "nvm_host_alloc");
    this.#rxView = new Uint8Array(toArrayBuffer(this.#rx, 0, RECV_CHUNK));
    this.#fdsPtr = (Number(this.#rx) + RECV_CHUNK) as Pointer;
    this.#fds = new Int32Array(toArrayBuffer(this.#rx, RECV_CHUNK, 4 * (MAX_FDS + 1)));
  }

  /**
   * Bytes that arrived, waiting at most `timeoutUs` (0: only look): a copy, empty when none.
   * ShareError "server-gone" when the peer closed the connection (or its process died).
   */
  recv(timeoutUs: number): Uint8Array {
    if (this.#closed) throw new ShareError(`${this.address}: the connection is closed`, "server-gone", this.address);
    this.#ensureRx();
    const r = native().nvm_unix_recv(this.fd, this.#rx!, RECV_CHUNK, Math.max(0, Math.floor(timeoutUs)));
    if (r > 0) return this.#rxView!.slice(0, r);
    if (r === 0) return new Uint8Array(0);
    const errno = -r;
    throw new ShareError(
      errno === ENOTCONN ? `${this.address}: the peer closed the connection (it exited or died)` : `${this.address}: receiving failed (${errnoName(errno)})`,
      "server-gone",
      this.address,
    );
  }

  /** SO_PEERCRED of the other end. */
  peer(): PeerCred {
    return peerCred(this.fd);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    native().nvm_unix_close(this.fd);
    if (this.#rx) native().nvm_host_free(this.#rx);
    this.#rx = undefined;
    this.#rxView = undefined;
    this.#fdsPtr = undefined;
    this.#fds = undefined;
  }
}

function peerCred(fd: number): PeerCred {
  const n = native();
  const out = checkPtr(n.nvm_host_alloc(16), "nvm_host_alloc");
  try {
    const r = n.nvm_unix_peercred(fd, out);
    if (r < 0) throw new ShareError(`SO_PEERCRED failed: ${errnoName(-r)}`, "peer", "");
    const v = new Uint32Array(toArrayBuffer(out, 0, 12));
    return { pid: v[0]!, uid: v[1]!, gid: v[2]! };
  } finally {
    n.nvm_host_free(out);
  }
}

/** Connect to the server at `path` within `timeoutMs`: ShareError "server-gone" with the reason and the fix. */
export function connectUnix(path: string, timeoutMs: number): UnixConnection {
  const address = `unix:${path}`;
  const fd = native().nvm_unix_connect(cstr(path), Math.max(1, Math.ceil(timeoutMs)));
  if (fd >= 0) return new UnixConnection(fd, address);
  const errno = -fd;
  const why =
    errno === 2
      ? "no such socket: start the server (bun run examples/serve.ts --ctrl=BDF) or check the path"
      : errno === 111
        ? "connection refused: nobody serves it any more (a server that exited left the socket file); start the server again"
        : errno === 13 || errno === 1
          ? "permission denied: the socket is the server's (mode 0600 by default); run as its user, or start it with --mode"
          : errno === 36
            ? "the path is too long for a Unix socket (107 bytes at most)"
            : errno === 110
              ? `the server did not accept within ${timeoutMs} ms`
              : errnoName(errno);
  throw new ShareError(`cannot connect to ${address}: ${why}`, "server-gone", address);
}

/** A listening socket; accept() hands out connections with their peer credentials. */
export class UnixListener implements ShareListener {
  readonly fd: number;
  readonly path: string;
  readonly address: string;
  readonly #cred: Pointer;
  readonly #credView: Uint32Array;
  #closed = false;

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
    this.address = `unix:${path}`;
    this.#cred = checkPtr(native().nvm_host_alloc(16), "nvm_host_alloc");
    this.#credView = new Uint32Array(toArrayBuffer(this.#cred, 0, 12));
  }

  /**
   * Listen at `path` with permissions `mode`. A socket file left by a server that is gone (nobody
   * accepts on it) is replaced; one a live server listens on is ShareError "refused".
   */
  static listen(path: string, mode: number): UnixListener {
    const n = native();
    let fd = n.nvm_unix_listen(cstr(path), mode, 64);
    if (fd === -98) {
      // EADDRINUSE: a live server, or a socket file a dead one left behind.
      const probe = n.nvm_unix_connect(cstr(path), 200);
      if (probe >= 0) {
        n.nvm_unix_close(probe);
        throw new ShareError(`unix:${path} is served already (another server listens there): stop it first, or pick another --socket`, "refused", `unix:${path}`);
      }
      try {
        unlinkSync(path);
      } catch {
        // Raced with another server, or not ours: listen says what is wrong.
      }
      fd = n.nvm_unix_listen(cstr(path), mode, 64);
    }
    if (fd < 0) {
      const errno = -fd;
      throw new ShareError(
        `cannot listen at unix:${path}: ${errnoName(errno)}${errno === 2 ? " (its directory does not exist: create it, e.g. mkdir -p /run/libnvm)" : errno === 13 ? " (no permission to create it there: run as root or pick another --socket)" : ""}`,
        "refused",
        `unix:${path}`,
      );
    }
    return new UnixListener(fd, path);
  }

  /** A pending connection and its peer's credentials, or undefined when none waits (never blocks). */
  accept(): { conn: UnixConnection; peer: PeerCred } | undefined {
    if (this.#closed) return undefined;
    const fd = native().nvm_unix_accept(this.fd, this.#cred);
    if (fd === -EAGAIN) return undefined;
    if (fd < 0) return undefined;
    const v = this.#credView;
    return { conn: new UnixConnection(fd, `unix:${this.path}`), peer: { pid: v[0]!, uid: v[1]!, gid: v[2]! } };
  }

  /** Stop listening and remove the socket file. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    native().nvm_unix_close(this.fd);
    native().nvm_host_free(this.#cred);
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone.
    }
  }
}
