/**
 * The sharing protocol across a SmartIO cluster: the carrier (carrier.ts) of protocol.ts's frames
 * over SISCI data interrupts, so a process on any host that borrows the controller uses the admin
 * queue of the process that serves it (the C original's nvm_dis_rpc_*). The frames are the Unix
 * socket's, unchanged: request ids, deadlines, the server's filter and quotas all hold here too.
 *
 * Finding the server: a SHARED device segment of the controller (RENDEZVOUS_SEGMENT_ID, seen by
 * every borrower) holds one 64-byte slot per adapter. The server fills its slot with
 *
 *   0  magic     u32  "LNVR" (written last: a reader never sees half a slot)
 *   4  carrier   u32  CARRIER_VERSION
 *   8  protocol  u32  SHARE_VERSION
 *  12  node      u32  the server's node id
 *  16  interrupt u32  the server's data interrupt
 *  20  pid       u32  the server's pid (for messages)
 *  24  datagram  u32  the largest data interrupt it takes, in bytes
 *
 * and zeroes the magic when it stops. A client maps the segment read-only, finds a slot, creates
 * a data interrupt of its own for what the server sends it, connects to the server's, and opens a
 * connection. Each data interrupt is one datagram:
 *
 *   0  magic     u32  "LNVD"
 *   4  version   u8   CARRIER_VERSION
 *   5  kind      u8   OPEN, ACCEPT, DATA, CLOSE, PING, REFUSE
 *   6  length    u16  payload bytes
 *   8  node      u32  the client's node id        } the connection, in both directions
 *  12  interrupt u32  the client's interrupt      }
 *  16  session   u32  the client's random number for this connection: datagrams of an earlier
 *                     connection from the same node and interrupt are dropped
 *  20  seq       u32  DATA: 1, 2, 3, ... per direction; a gap ends the connection (nothing
 *                     after a lost piece of the stream can be trusted)
 *
 * A frame larger than a datagram's payload (a 64 KiB log page) travels as several DATA datagrams
 * in order: the stream is what the frames' reader (FrameReader) takes, as from a socket. (The
 * rendezvous segment is read-only to clients, as in the C original, so large frames do not go
 * through it: that would need a segment every client may write.)
 *
 * Liveness: SISCI tells nobody that a peer died. So a side that heard nothing from its peer for
 * pingMs triggers a PING; a trigger that fails (the peer's interrupt is gone: it exited or was
 * killed) ends the connection with ShareError "server-gone", the server then reclaims the client's
 * queues as on a closed socket. A trigger the peer is too busy to take (SCI_ERR_BUSY) is retried
 * until the send's deadline, taking in what arrives meanwhile so two sides sending at once both
 * progress. There are no peer credentials across hosts: the server serves any borrower of the
 * device (PeerInfo.uid undefined), which can map the controller's BAR anyway.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { InvalidArgumentError, ShareError, UnsupportedError } from "../errors.ts";
import { checkPtr, errnoName, native } from "../native.ts";
import { HINT_HOST_WRITE, HINT_MULTIHOST_READ, lastSisciFailure, MAP_READONLY, MEMTYPE_SHARED, sisciError, sisciScratch, sisciShim, type SisciShim } from "../sisci.ts";
import type { PeerInfo, ShareConnection, ShareListener } from "./carrier.ts";
import { SHARE_VERSION } from "./protocol.ts";

/** The SHARED device segment servers publish themselves in ("lnv"). */
export const RENDEZVOUS_SEGMENT_ID = 0x6c6e76;
export const RENDEZVOUS_BYTES = 4096;
export const SLOT_BYTES = 64;
/** Slots in the rendezvous: one per adapter, as SISCI numbers them (the C original had 4). */
export const SLOTS = 4;
export const RENDEZVOUS_MAGIC = 0x52564e4c; // "LNVR"
export const DATAGRAM_MAGIC = 0x44564e4c; // "LNVD"
export const CARRIER_VERSION = 1;
export const DATAGRAM_HEADER = 24;
/** The largest data interrupt sent by default: the fake SISCI's limit; a real adapter's may differ (datagramBytes). */
export const DEFAULT_DATAGRAM_BYTES = 4096;
export const KIND_OPEN = 1;
export const KIND_ACCEPT = 2;
export const KIND_DATA = 3;
export const KIND_CLOSE = 4;
export const KIND_PING = 5;
export const KIND_REFUSE = 6;

const EBUSY = 16;
const ENOENT = 2;
const EEXIST = 17;
const ETIMEDOUT = 110;
const TWO32 = 0x1_0000_0000;

export interface SisciLinkOptions {
  /** The largest data interrupt this side sends, header included (64 to 65535). Defaults to 4096. */
  readonly datagramBytes?: number;
  /** Silence from the peer after which this side checks it is alive (ms). Defaults to 200. */
  readonly pingMs?: number;
}

/** smartio-rpc:80000 → 0x80000; undefined for any other target. */
export function sisciRpcFdid(target: string): number | undefined {
  const m = /^smartio-rpc:(?:0x)?([0-9a-f]{1,8})$/i.exec(target.trim());
  return m ? parseInt(m[1]!, 16) : undefined;
}

/** What clients open: smartio-rpc:<fdid in hex>. */
export function sisciRpcAddress(fdid: number): string {
  return `smartio-rpc:${fdid.toString(16)}`;
}

function datagramSize(opts: SisciLinkOptions): number {
  const n = opts.datagramBytes ?? DEFAULT_DATAGRAM_BYTES;
  if (!Number.isInteger(n) || n < 64 || n > 65535) throw new InvalidArgumentError(`datagramBytes ${n}: 64 to 65535`);
  return n;
}

interface Datagram {
  readonly kind: number;
  readonly node: number;
  readonly intno: number;
  readonly session: number;
  readonly seq: number;
  readonly payload: Uint8Array;
}

/** The datagram in `b`, or undefined when it is not one of ours (dropped: nothing of it can be trusted). */
export function parseDatagram(b: Uint8Array): Datagram | undefined {
  if (b.length < DATAGRAM_HEADER) return undefined;
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  if (dv.getUint32(0, true) !== DATAGRAM_MAGIC || dv.getUint8(4) !== CARRIER_VERSION) return undefined;
  const length = dv.getUint16(6, true);
  if (DATAGRAM_HEADER + length !== b.length) return undefined;
  return {
    kind: dv.getUint8(5),
    node: dv.getUint32(8, true),
    intno: dv.getUint32(12, true),
    session: dv.getUint32(16, true),
    seq: dv.getUint32(20, true),
    payload: b.slice(DATAGRAM_HEADER),
  };
}

/** C buffers for one endpoint's datagrams (the shim reads and writes them). */
class Buffers {
  readonly tx: Pointer;
  readonly txView: Uint8Array;
  readonly rx: Pointer;
  readonly rxView: Uint8Array;
  #freed = false;
  constructor(readonly size: number) {
    this.tx = checkPtr(native().nvm_host_alloc(size), "nvm_host_alloc");
    this.rx = checkPtr(native().nvm_host_alloc(size), "nvm_host_alloc");
    this.txView = new Uint8Array(toArrayBuffer(this.tx, 0, size));
    this.rxView = new Uint8Array(toArrayBuffer(this.rx, 0, size));
  }
  /** Write a datagram into tx; its length. */
  put(kind: number, node: number, intno: number, session: number, seq: number, payload?: Uint8Array): number {
    const n = payload?.length ?? 0;
    const dv = new DataView(this.txView.buffer, this.txView.byteOffset, this.size);
    dv.setUint32(0, DATAGRAM_MAGIC, true);
    dv.setUint8(4, CARRIER_VERSION);
    dv.setUint8(5, kind);
    dv.setUint16(6, n, true);
    dv.setUint32(8, node >>> 0, true);
    dv.setUint32(12, intno >>> 0, true);
    dv.setUint32(16, session >>> 0, true);
    dv.setUint32(20, seq >>> 0, true);
    if (payload) this.txView.set(payload, DATAGRAM_HEADER);
    return DATAGRAM_HEADER + n;
  }
  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    native().nvm_host_free(this.tx);
    native().nvm_host_free(this.rx);
  }
}

/** What a trigger came to: sent, the peer's interrupt gone (errno), or still busy at the deadline. */
type Sent = { ok: true } | { ok: false; gone: boolean; errno: number };

/**
 * Trigger `rintr` with tx[0, len) until it is taken or `deadline` passes; while the peer is busy,
 * `meanwhile` takes in what arrives here (so a peer that sends to us at the same time progresses).
 */
function trigger(shim: SisciShim, rintr: Pointer, b: Buffers, len: number, deadline: number, meanwhile: () => void): Sent {
  for (;;) {
    if (shim.nvm_sisci_intr_trigger(rintr, b.tx, len) === 0) return { ok: true };
    const errno = lastSisciFailure().errno;
    if (errno !== EBUSY) return { ok: false, gone: true, errno };
    if (performance.now() >= deadline) return { ok: false, gone: false, errno };
    meanwhile();
    Bun.sleepSync(1);
  }
}

/** How the connection takes in datagrams: waits at most `waitMs` for some, hands each to its connection. */
type Receiver = (waitMs: number) => void;

/**
 * One end of a connection over SISCI data interrupts. The client's end waits on its own
 * interrupt; the server's ends share the server's interrupt, which the listener reads for all.
 */
export class SisciConnection implements ShareConnection {
  readonly address: string;
  /** The client's node id and interrupt: the connection's name in every datagram. */
  readonly node: number;
  readonly intno: number;
  readonly session: number;
  readonly #shim: SisciShim;
  readonly #rintr: Pointer;
  readonly #buf: Buffers;
  readonly #receive: Receiver;
  readonly #pingMs: number;
  readonly #onClose: () => void;
  readonly #inbox: Uint8Array[] = [];
  #txSeq = 0;
  #rxSeq = 0;
  #lastHeard = performance.now();
  #lastPing = 0;
  /** Why the peer is gone (it closed, died, or the stream broke); set once. */
  #gone: string | undefined;
  #closed = false;

  /** @internal sisci-link.ts makes these: connectSisci() and SisciListener. */
  constructor(a: { address: string; node: number; intno: number; session: number; shim: SisciShim; rintr: Pointer; buf: Buffers; receive?: Receiver; pingMs: number; onClose: () => void }) {
    this.address = a.address;
    this.node = a.node;
    this.intno = a.intno;
    this.session = a.session;
    this.#shim = a.shim;
    this.#rintr = a.rintr;
    this.#buf = a.buf;
    this.#receive = a.receive ?? (() => {});
    this.#pingMs = a.pingMs;
    this.#onClose = a.onClose;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The peer is gone (or the stream broke): nothing more will arrive. */
  get peerGone(): boolean {
    return this.#gone !== undefined;
  }

  /** @internal A datagram of this connection (the session matched). */
  deliver(d: Datagram): void {
    this.#lastHeard = performance.now();
    if (this.#gone) return;
    switch (d.kind) {
      case KIND_DATA:
        if (d.seq !== this.#rxSeq + 1) {
          this.#gone = `the link lost a piece of the stream (piece ${d.seq} arrived, ${this.#rxSeq + 1} was next): nothing after it can be trusted`;
          return;
        }
        this.#rxSeq = d.seq;
        if (d.payload.length > 0) this.#inbox.push(d.payload);
        return;
      case KIND_CLOSE:
        this.#gone = "the peer closed the connection (it stopped, or dropped this connection)";
        return;
      default:
        return; // PING: heard; ACCEPT again: nothing new
    }
  }

  /** @internal The peer went away in a way the listener saw (its interrupt reused by a new connection). */
  markGone(why: string): void {
    this.#gone ??= why;
  }

  #fail(why: string): never {
    throw new ShareError(`${this.address}: ${why}`, "server-gone", this.address);
  }

  #send1(kind: number, seq: number, payload: Uint8Array | undefined, deadline: number): Sent {
    const len = this.#buf.put(kind, this.node, this.intno, this.session, seq, payload);
    return trigger(this.#shim, this.#rintr, this.#buf, len, deadline, () => this.#receive(0));
  }

  send(bytes: Uint8Array, timeoutMs: number): void {
    if (this.#closed) this.#fail("the connection is closed");
    if (this.#gone) this.#fail(this.#gone);
    const deadline = performance.now() + timeoutMs;
    const room = this.#buf.size - DATAGRAM_HEADER;
    for (let at = 0; at < bytes.length; at += room) {
      const r = this.#send1(KIND_DATA, ++this.#txSeq, bytes.subarray(at, Math.min(bytes.length, at + room)), deadline);
      if (r.ok) continue;
      // Part of a frame may be out: the peer's stream cannot be resumed after this.
      this.#gone = r.gone
        ? `sending failed (${errnoName(r.errno)}): the peer's data interrupt is gone (it exited or died)`
        : `the peer did not take a message within ${timeoutMs} ms`;
      throw new ShareError(`${this.address}: ${this.#gone}`, r.gone ? "server-gone" : "timeout", this.address);
    }
  }

  sendWithFd(_bytes: Uint8Array, _fd: number, _timeoutMs: number): void {
    throw new UnsupportedError(`${this.address}: descriptors do not cross a SmartIO cluster; a SISCI client maps its own memory for the device`);
  }

  /** A PING when the peer was quiet for pingMs: a trigger that fails means its interrupt is gone. */
  #checkAlive(): void {
    const now = performance.now();
    if (now - this.#lastHeard < this.#pingMs || now - this.#lastPing < this.#pingMs) return;
    this.#lastPing = now;
    const len = this.#buf.put(KIND_PING, this.node, this.intno, this.session, 0);
    if (this.#shim.nvm_sisci_intr_trigger(this.#rintr, this.#buf.tx, len) === 0) return;
    const errno = lastSisciFailure().errno;
    // Busy: it is there, with messages it has not read yet.
    if (errno !== EBUSY) this.#gone = `the peer's data interrupt is gone (${errnoName(errno)}): it exited or died`;
  }

  recvWithFds(timeoutUs = 0): { bytes: Uint8Array; fds: number[] } {
    return { bytes: this.recv(timeoutUs), fds: [] };
  }

  recv(timeoutUs: number): Uint8Array {
    if (this.#closed) this.#fail("the connection is closed");
    const deadline = performance.now() + Math.max(0, timeoutUs) / 1000;
    for (;;) {
      this.#receive(0);
      if (this.#inbox.length > 0) {
        const parts = this.#inbox.splice(0);
        if (parts.length === 1) return parts[0]!;
        const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
        let at = 0;
        for (const p of parts) {
          out.set(p, at);
          at += p.length;
        }
        return out;
      }
      if (this.#gone) this.#fail(this.#gone);
      this.#checkAlive();
      if (this.#gone) this.#fail(this.#gone);
      const left = deadline - performance.now();
      if (left <= 0) return new Uint8Array(0);
      this.#receive(Math.min(left, this.#pingMs));
    }
  }

  /** Say goodbye (one try: a peer that is gone does not need it), then let go of the interrupts. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#gone) {
      const len = this.#buf.put(KIND_CLOSE, this.node, this.intno, this.session, 0);
      this.#shim.nvm_sisci_intr_trigger(this.#rintr, this.#buf.tx, len);
    }
    this.#shim.nvm_sisci_intr_disconnect(this.#rintr);
    this.#onClose();
  }

  /** @internal For tests: vanish as a killed process would, no goodbye. */
  abandonForTests(): void {
    this.#gone ??= "abandoned";
    this.close();
  }
}

/** Read the slots of a mapped rendezvous segment. */
export function readSlots(view: DataView): { slot: number; carrier: number; protocol: number; node: number; intno: number; pid: number; datagram: number }[] {
  const out = [];
  for (let i = 0; i < SLOTS; i++) {
    const o = i * SLOT_BYTES;
    if (view.getUint32(o, true) !== RENDEZVOUS_MAGIC) continue;
    out.push({
      slot: i,
      carrier: view.getUint32(o + 4, true),
      protocol: view.getUint32(o + 8, true),
      node: view.getUint32(o + 12, true),
      intno: view.getUint32(o + 16, true),
      pid: view.getUint32(o + 20, true),
      datagram: view.getUint32(o + 24, true),
    });
  }
  return out;
}

function randomSession(): number {
  const v = new Uint32Array(1);
  do crypto.getRandomValues(v);
  while (v[0] === 0);
  return v[0]!;
}

/** The rendezvous segment of `fdid`, connected and mapped (read-only for clients); undo() lets it go. */
function mapRendezvous(shim: SisciShim, dev: Pointer, address: string, write: boolean): { view: DataView; undo(): void } {
  const s = sisciScratch();
  const seg = shim.nvm_sisci_connect_device_segment(dev, RENDEZVOUS_SEGMENT_ID, MEMTYPE_SHARED, s.ptr);
  if (seg === null) {
    if (!write && lastSisciFailure().errno === ENOENT) {
      throw new ShareError(
        `${address}: nobody serves this controller over SISCI (its rendezvous segment does not exist): start a server on the host that owns it, e.g. bun run examples/serve.ts --ctrl=smartio:${address.slice(12)} --sisci`,
        "server-gone",
        address,
      );
    }
    throw sisciError(`${address}: connecting the rendezvous segment`);
  }
  const size = s.u32[0]!;
  if (size < RENDEZVOUS_BYTES) {
    shim.nvm_sisci_disconnect(seg, 1000);
    throw new ShareError(`${address}: the rendezvous segment is ${size} bytes, not ${RENDEZVOUS_BYTES}: another program uses segment id 0x${RENDEZVOUS_SEGMENT_ID.toString(16)}`, "version", address);
  }
  const p = shim.nvm_sisci_remote_map_cpu(seg, 0, RENDEZVOUS_BYTES, write ? 0 : MAP_READONLY);
  if (p === null) {
    const e = sisciError(`${address}: mapping the rendezvous segment`);
    shim.nvm_sisci_disconnect(seg, 1000);
    throw e;
  }
  const view = new DataView(toArrayBuffer(p, 0, RENDEZVOUS_BYTES));
  return {
    view,
    undo() {
      shim.nvm_sisci_remote_unmap_cpu(seg, 1000);
      shim.nvm_sisci_disconnect(seg, 1000);
    },
  };
}

/** Borrow `fdid` (not exclusively: the server and every client borrow it at once); its adapter. */
function borrow(shim: SisciShim, fdid: number, address: string): { dev: Pointer; adapter: number } {
  const s = sisciScratch();
  const dev = shim.nvm_sisci_device_borrow(fdid, 0, s.ptr);
  if (dev === null) {
    throw sisciError(`${address}: borrowing the device`, {
      "not-available": "the device is not lent, or a process borrowed it exclusively: a server for SISCI clients must borrow it shared (examples/serve.ts --ctrl=smartio:<fdid> --sisci does)",
    });
  }
  return { dev, adapter: s.u32[1]! };
}

/**
 * Connect to the server of fabric device `fdid` within `timeoutMs`: ShareError "server-gone" when
 * nobody serves it (no rendezvous, no live server), "version" for another libnvm, "timeout" when
 * the server does not accept in time; SmartIoError for SISCI itself (not installed, no device).
 */
export function connectSisci(fdid: number, timeoutMs: number, opts: SisciLinkOptions = {}): SisciConnection {
  const address = sisciRpcAddress(fdid);
  const size = datagramSize(opts);
  const pingMs = opts.pingMs ?? 200;
  const shim = sisciShim();
  if (shim.nvm_sisci_init() < 0) throw sisciError(`${address}: initialising SISCI`);
  const undo: (() => void)[] = [() => shim.nvm_sisci_fini()];
  const unwind = () => {
    for (const f of undo.splice(0).reverse()) f();
  };
  try {
    // The rendezvous is needed only to find the server: the borrow goes once it is read.
    const { dev, adapter } = borrow(shim, fdid, address);
    let slots: ReturnType<typeof readSlots>;
    try {
      const rv = mapRendezvous(shim, dev, address, false);
      slots = readSlots(rv.view);
      rv.undo();
    } finally {
      shim.nvm_sisci_device_return(dev, 1000);
    }
    if (slots.length === 0) {
      throw new ShareError(`${address}: no server is published in the rendezvous segment (the last one stopped): start one, e.g. bun run examples/serve.ts --ctrl=smartio:${fdid.toString(16)} --sisci`, "server-gone", address);
    }
    const srv = slots[0]!;
    if (srv.carrier !== CARRIER_VERSION || srv.protocol !== SHARE_VERSION) {
      throw new ShareError(
        `${address}: the server (node ${srv.node}, pid ${srv.pid}) speaks SISCI carrier ${srv.carrier} / protocol ${srv.protocol}; this libnvm speaks ${CARRIER_VERSION} / ${SHARE_VERSION}: run the same libnvm on the server and its clients`,
        "version",
        address,
      );
    }
    const buf = new Buffers(Math.min(size, Math.max(64, srv.datagram)));
    undo.push(() => buf.free());
    const s = sisciScratch();
    const intr = shim.nvm_sisci_intr_create(adapter, 0, 0, s.ptr);
    if (intr === null) throw sisciError(`${address}: creating this client's data interrupt`);
    undo.push(() => shim.nvm_sisci_intr_remove(intr, 1000));
    const intno = s.u32[0]!;
    const node = s.u32[1]!;
    const rintr = shim.nvm_sisci_intr_connect(adapter, srv.node, srv.intno, Math.min(timeoutMs, 2000));
    if (rintr === null) {
      const f = lastSisciFailure();
      throw new ShareError(
        `${address}: the server published in the rendezvous (node ${srv.node}, interrupt ${srv.intno}, pid ${srv.pid}) does not answer (${f.call}: ${f.text}): it died or its node is down; start it again`,
        "server-gone",
        address,
      );
    }
    const session = randomSession();
    let accepted = false;
    let refused: string | undefined;
    let conn!: SisciConnection;
    const receive: Receiver = (waitMs) => {
      for (let i = 0; i < 256; i++) {
        const n = shim.nvm_sisci_intr_wait(intr, buf.rx, buf.size, i === 0 ? Math.ceil(Math.max(0, waitMs)) : 0);
        if (n < 0) {
          if (-n === ETIMEDOUT) return;
          continue; // a datagram too large for us: not ours, dropped
        }
        const d = parseDatagram(buf.rxView.slice(0, n));
        if (!d || d.session !== session || d.node !== node || d.intno !== intno) continue;
        if (d.kind === KIND_ACCEPT) accepted = true;
        else if (d.kind === KIND_REFUSE) refused = new TextDecoder().decode(d.payload);
        else conn.deliver(d);
      }
    };
    conn = new SisciConnection({
      address,
      node,
      intno,
      session,
      shim,
      rintr,
      buf,
      receive,
      pingMs,
      onClose: () => {
        shim.nvm_sisci_intr_remove(intr, 1000);
        buf.free();
        shim.nvm_sisci_fini();
      },
    });
    undo.push(() => shim.nvm_sisci_intr_disconnect(rintr));
    // OPEN: pid, and the largest datagram this side takes.
    const hello = new Uint8Array(8);
    new DataView(hello.buffer).setUint32(0, process.pid, true);
    new DataView(hello.buffer).setUint32(4, buf.size, true);
    const deadline = performance.now() + timeoutMs;
    const len = buf.put(KIND_OPEN, node, intno, session, 0, hello);
    const sent = trigger(shim, rintr, buf, len, deadline, () => receive(0));
    if (!sent.ok) {
      throw new ShareError(`${address}: the server ${sent.gone ? `is gone (${errnoName(sent.errno)})` : `did not take the connection within ${timeoutMs} ms`}`, sent.gone ? "server-gone" : "timeout", address);
    }
    while (!accepted && refused === undefined) {
      const left = deadline - performance.now();
      if (left <= 0) throw new ShareError(`${address}: the server (node ${srv.node}, pid ${srv.pid}) did not accept within ${timeoutMs} ms: it is stuck or overloaded`, "timeout", address);
      receive(Math.min(left, 50));
    }
    if (refused !== undefined) throw new ShareError(`${address}: the server refused this client: ${refused}`, "refused", address);
    undo.splice(0); // the connection owns them now
    return conn;
  } catch (e) {
    unwind();
    throw e;
  }
}

export interface SisciListenerOptions extends SisciLinkOptions {
  /** How long connecting back to a new client's interrupt may take (ms). Defaults to 1000. */
  readonly connectMs?: number;
}

/**
 * A server's side: its data interrupt, published in the rendezvous segment of the device it serves,
 * and the connections of its clients (accept()). The controller's backend must borrow the device
 * shared (not exclusively), or no client can borrow it.
 */
export class SisciListener implements ShareListener {
  readonly address: string;
  readonly fdid: number;
  readonly node: number;
  readonly intno: number;
  readonly #shim: SisciShim;
  readonly #dev: Pointer;
  readonly #adapter: number;
  readonly #intr: Pointer;
  readonly #rv: { view: DataView; undo(): void };
  readonly #slot: number;
  readonly #buf: Buffers;
  readonly #pingMs: number;
  readonly #connectMs: number;
  /** Connections by "node:interrupt". */
  readonly #conns = new Map<string, SisciConnection>();
  readonly #pending: { conn: ShareConnection; peer: PeerInfo }[] = [];
  #closed = false;
  /** Datagrams dropped: not ours, or of a connection that is gone. */
  dropped = 0;

  private constructor(fdid: number, opts: SisciListenerOptions) {
    this.fdid = fdid;
    this.address = sisciRpcAddress(fdid);
    this.#pingMs = opts.pingMs ?? 200;
    this.#connectMs = opts.connectMs ?? 1000;
    const size = datagramSize(opts);
    const shim = sisciShim();
    this.#shim = shim;
    if (shim.nvm_sisci_init() < 0) throw sisciError(`${this.address}: initialising SISCI`);
    const undo: (() => void)[] = [() => shim.nvm_sisci_fini()];
    try {
      const { dev, adapter } = borrow(shim, fdid, this.address);
      undo.push(() => shim.nvm_sisci_device_return(dev, 1000));
      this.#dev = dev;
      this.#adapter = adapter;
      const s = sisciScratch();
      const intr = shim.nvm_sisci_intr_create(adapter, 0, 0, s.ptr);
      if (intr === null) throw sisciError(`${this.address}: creating the server's data interrupt`);
      undo.push(() => shim.nvm_sisci_intr_remove(intr, 1000));
      this.#intr = intr;
      this.intno = s.u32[0]!;
      this.node = s.u32[1]!;
      // SHARED: every borrower of the device sees it. It outlives this server (SISCI has it
      // while the device is lent); the next server finds it and takes its slot over.
      const rc = shim.nvm_sisci_device_segment_create(dev, RENDEZVOUS_SEGMENT_ID, RENDEZVOUS_BYTES, MEMTYPE_SHARED, HINT_HOST_WRITE | HINT_MULTIHOST_READ);
      if (rc < 0 && -rc !== EEXIST) throw sisciError(`${this.address}: creating the rendezvous segment`);
      const rv = mapRendezvous(shim, dev, this.address, true);
      undo.push(() => rv.undo());
      this.#rv = rv;
      this.#slot = adapter % SLOTS;
      for (const other of readSlots(rv.view)) {
        // A dead server's interrupt number may be ours now (SISCI hands numbers out again).
        if (other.node === this.node && other.intno === this.intno) continue;
        // A slot a live server holds: its interrupt still takes connections.
        const probe = shim.nvm_sisci_intr_connect(adapter, other.node, other.intno, 100);
        if (probe === null) continue;
        shim.nvm_sisci_intr_disconnect(probe);
        throw new ShareError(`${this.address} is served already (node ${other.node}, pid ${other.pid}): stop that server first`, "refused", this.address);
      }
      this.#buf = new Buffers(size);
      undo.push(() => this.#buf.free());
      const o = this.#slot * SLOT_BYTES;
      const v = rv.view;
      v.setUint32(o, 0, true);
      v.setUint32(o + 4, CARRIER_VERSION, true);
      v.setUint32(o + 8, SHARE_VERSION, true);
      v.setUint32(o + 12, this.node, true);
      v.setUint32(o + 16, this.intno, true);
      v.setUint32(o + 20, process.pid, true);
      v.setUint32(o + 24, size, true);
      // The magic last, after the rest is out of write-combining buffers: a client never takes a half-written slot.
      shim.nvm_sisci_flush();
      v.setUint32(o, RENDEZVOUS_MAGIC, true);
      shim.nvm_sisci_flush();
    } catch (e) {
      for (const f of undo.reverse()) f();
      throw e;
    }
  }

  /** Serve fabric device `fdid`'s clients: publish this process in its rendezvous segment. */
  static listen(fdid: number, opts: SisciListenerOptions = {}): SisciListener {
    if (!Number.isInteger(fdid) || fdid < 0 || fdid >= TWO32) throw new InvalidArgumentError(`fabric device id ${fdid}: a 32-bit unsigned integer`);
    return new SisciListener(fdid, opts);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Take in what arrived at the server's interrupt, waiting at most `waitMs` for the first datagram. */
  pump(waitMs: number): void {
    if (this.#closed) return;
    const b = this.#buf;
    for (let i = 0; i < 512; i++) {
      const n = this.#shim.nvm_sisci_intr_wait(this.#intr, b.rx, b.size, i === 0 ? Math.ceil(Math.max(0, waitMs)) : 0);
      if (n < 0) {
        if (-n === ETIMEDOUT) return;
        this.dropped++;
        continue;
      }
      const d = parseDatagram(b.rxView.slice(0, n));
      if (!d) {
        this.dropped++;
        continue;
      }
      this.#dispatch(d);
    }
  }

  #dispatch(d: Datagram): void {
    const key = `${d.node}:${d.intno}`;
    const conn = this.#conns.get(key);
    if (d.kind === KIND_OPEN) {
      if (conn?.session === d.session) return; // the same OPEN again
      // A new connection from the same node and interrupt: the process that had it is gone.
      conn?.markGone(`its interrupt (node ${d.node}, ${d.intno}) was taken by a new connection: the client exited or died`);
      this.#open(d, key);
      return;
    }
    if (conn && conn.session === d.session) {
      conn.deliver(d);
      return;
    }
    this.dropped++;
    // Someone who thinks it is connected (to a server before this one): tell it, once per message.
    if (d.kind === KIND_DATA || d.kind === KIND_PING) this.#tell(d, KIND_CLOSE);
  }

  /** Answer a datagram's sender with `kind` (connect, trigger, disconnect: it is not a connection of ours). */
  #tell(d: Datagram, kind: number, payload?: Uint8Array): void {
    const r = this.#shim.nvm_sisci_intr_connect(this.#adapter, d.node, d.intno, 50);
    if (r === null) return;
    const len = this.#buf.put(kind, d.node, d.intno, d.session, 0, payload);
    this.#shim.nvm_sisci_intr_trigger(r, this.#buf.tx, len);
    this.#shim.nvm_sisci_intr_disconnect(r);
  }

  #open(d: Datagram, key: string): void {
    if (d.payload.length < 8) return;
    const dv = new DataView(d.payload.buffer, d.payload.byteOffset, d.payload.length);
    const pid = dv.getUint32(0, true);
    const theirs = dv.getUint32(4, true);
    if (theirs < 64) return;
    // One connection per client for its whole life (the C original connected for every reply).
    const rintr = this.#shim.nvm_sisci_intr_connect(this.#adapter, d.node, d.intno, this.#connectMs);
    if (rintr === null) return; // it is gone already
    const buf = new Buffers(Math.min(this.#buf.size, theirs));
    const conn = new SisciConnection({
      address: this.address,
      node: d.node,
      intno: d.intno,
      session: d.session,
      shim: this.#shim,
      rintr,
      buf,
      receive: (waitMs) => this.pump(waitMs),
      pingMs: this.#pingMs,
      onClose: () => {
        buf.free();
        if (this.#conns.get(key) === conn) this.#conns.delete(key);
      },
    });
    this.#conns.set(key, conn);
    const len = buf.put(KIND_ACCEPT, d.node, d.intno, d.session, 0);
    if (this.#shim.nvm_sisci_intr_trigger(rintr, buf.tx, len) !== 0) {
      conn.markGone("it did not take the connection's acceptance");
      conn.close();
      return;
    }
    this.#pending.push({ conn, peer: { pid, uid: undefined, where: `node ${d.node}, interrupt ${d.intno}` } });
  }

  accept(): { conn: ShareConnection; peer: PeerInfo } | undefined {
    if (this.#closed) return undefined;
    this.pump(0);
    return this.#pending.shift();
  }

  /** Withdraw from the rendezvous (clients then find no server), close what is left, let go of SISCI. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const shim = this.#shim;
    this.#rv.view.setUint32(this.#slot * SLOT_BYTES, 0, true);
    shim.nvm_sisci_flush();
    for (const c of [...this.#conns.values()]) c.close();
    for (const p of this.#pending.splice(0)) p.conn.close();
    this.#rv.undo();
    shim.nvm_sisci_intr_remove(this.#intr, 1000);
    this.#buf.free();
    shim.nvm_sisci_device_return(this.#dev, 1000);
    shim.nvm_sisci_fini();
  }

  /** @internal For tests: vanish as a killed server would (its interrupt gone, its slot left as it was). */
  abandonForTests(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of [...this.#conns.values()]) c.abandonForTests();
    this.#rv.undo();
    this.#shim.nvm_sisci_intr_remove(this.#intr, 1000);
    this.#buf.free();
    this.#shim.nvm_sisci_device_return(this.#dev, 1000);
    this.#shim.nvm_sisci_fini();
  }
}

