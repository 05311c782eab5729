/**
 * The sharing protocol: messages between a process that owns a controller (the server,
 * server.ts) and processes that use it (clients, client.ts), as bytes. Transport-neutral: nothing
 * here knows about sockets; the Unix socket (link.ts) carries it on one host, and a SmartIO
 * rendezvous segment can carry the same frames across a cluster.
 *
 * A frame is a 24-byte header and a body, little-endian:
 *
 *   0  magic      u32  "LNVS" (4c 4e 56 53)
 *   4  version    u8   SHARE_VERSION
 *   5  type       u8   MSG_*: requests below 80h, replies 80h and up
 *   6  flags      u16  0
 *   8  id         u32  request id: 1, 2, 3, ... per connection; a reply carries its request's id
 *  12  timeoutMs  u32  requests: how long the requester waits (the server gives up at that
 *                      deadline too); replies: 0
 *  16  length     u32  body bytes, at most MAX_BODY
 *  20  rsvd20     u32  0
 *
 * The C original's RPC matched replies to requests by arrival order, so a late reply to a
 * request that had timed out was taken for the next one. Here a reply names its request, the
 * client discards replies to requests it gave up on, and the server refuses ids that do not
 * increase (a replayed request).
 */
import { ShareProtocolError, type ShareErrorReason } from "../errors.ts";

/** "LNVS" as a little-endian u32. */
export const SHARE_MAGIC = 0x53564e4c;
/**
 * 2: the server pushes events (a controller reset that dropped the client's queues), and a disnvm
 * server answers hold-memory with the memory's bus addresses page by page (pages, memory-pages).
 */
export const SHARE_VERSION = 2;
export const HEADER_SIZE = 24;
/** The most data an admin command moves to the host through the server (Get Log Page). */
export const MAX_ADMIN_DATA = 64 * 1024;
/** Runs of bus addresses one pages message carries at most (12 bytes each): the rest come with memory-pages. */
export const MAX_RUNS = 4096;
/** The most data an admin command moves to the controller (Set Features data): one page. */
export const MAX_ADMIN_WRITE = 4096;
/** The largest body: admin data plus its fields. */
export const MAX_BODY = MAX_ADMIN_DATA + 1024;
/** The longest deadline a request may carry: 24 hours (a Format NVM with secure erase is long). */
export const MAX_TIMEOUT_MS = 24 * 3600 * 1000;
/** Strings (names, messages) are cut to this many bytes. */
const MAX_STRING = 4096;

export const MSG_HELLO = 0x01;
export const MSG_ADMIN = 0x02;
export const MSG_RESERVE_QUEUE = 0x03;
export const MSG_CREATE_QUEUE = 0x04;
export const MSG_DELETE_QUEUE = 0x05;
export const MSG_ABORT = 0x06;
export const MSG_RESET = 0x07;
export const MSG_BYE = 0x08;
export const MSG_HOLD_MEMORY = 0x09;
export const MSG_RELEASE_MEMORY = 0x0a;
export const MSG_MEMORY_PAGES = 0x0b;
export const MSG_OK = 0x80;
export const MSG_HELLO_OK = 0x81;
export const MSG_ADMIN_OK = 0x82;
export const MSG_QUEUE_IDS = 0x83;
export const MSG_MEMORY = 0x84;
export const MSG_PAGES = 0x85;
/** Sent by the server on its own (request id 0), never a reply. */
export const MSG_EVENT = 0x86;
export const MSG_ERROR = 0xff;

/** Hello: the first request of a connection. */
export interface Hello {
  readonly type: "hello";
  /** The client's pid, for the server's log (the server trusts SO_PEERCRED, not this). */
  readonly pid: number;
  /** What the client calls itself, for the server's log. */
  readonly label: string;
}

/** What a client needs to reach the controller itself: its registers, BAR0, and limits. */
export interface HelloOk {
  readonly type: "hello-ok";
  readonly clientId: number;
  /** CAP, lower and upper dword. */
  readonly capLo: number;
  readonly capHi: number;
  /** VS, raw. */
  readonly vs: number;
  /** The server's per-command timeout (ms). */
  readonly timeoutMs: number;
  /** I/O queues this client may hold at once. */
  readonly maxQueues: number;
  /** The server's backend: "sysfs" (clients map BAR0 and translate their own pages), ... */
  readonly backend: string;
  /** The controller's PCI address. */
  readonly bdf: string;
  /** The server's name of the controller. */
  readonly name: string;
  readonly serverPid: number;
  /**
   * VFIO: where BAR0 lies in the device file whose descriptor comes with this reply, and its size
   * (the client maps it from there). 0 for other backends.
   */
  readonly bar0Offset: number;
  readonly bar0Size: number;
}

/** An admin command: its 16 dwords (the server sets CID and the data pointer), and its data. */
export interface AdminRequest {
  readonly type: "admin";
  readonly sqe: Uint32Array;
  /** Bytes the controller returns (0: none), at most MAX_ADMIN_DATA. */
  readonly toHost: number;
  /** Bytes sent to the controller, at most MAX_ADMIN_WRITE. */
  readonly toController?: Uint8Array;
}

/** An admin command's completion: status 0 or the 15-bit status field (CQE DW3 31:17), DW0, DW1, data. */
export interface AdminOk {
  readonly type: "admin-ok";
  readonly status: number;
  readonly dw0: number;
  readonly dw1: number;
  readonly data?: Uint8Array;
}

export interface ReserveQueue {
  readonly type: "reserve-queue";
  readonly entries: number;
}
export interface QueueIds {
  readonly type: "queue-ids";
  readonly sqid: number;
  readonly cqid: number;
}
/** Create I/O CQ `cqid` at `cqBus`, then I/O SQ `sqid` at `sqBus` bound to it: the client's own memory. */
export interface CreateQueue {
  readonly type: "create-queue";
  readonly sqid: number;
  readonly cqid: number;
  readonly entries: number;
  readonly sqBus: number;
  readonly cqBus: number;
}
/** Delete I/O SQ `sqid`, then its CQ. */
export interface DeleteQueue {
  readonly type: "delete-queue";
  readonly sqid: number;
}
/** Abort command `cid` of the client's SQ `sqid`. */
export interface AbortRequest {
  readonly type: "abort";
  readonly sqid: number;
  readonly cid: number;
}
/**
 * Keep `bytes` of the client's DMA memory alive: the descriptor of the memfd that holds it travels
 * with this message (SCM_RIGHTS on a Unix socket). The server keeps it until the client releases
 * it, or, when the client is gone, until its queues are deleted: the controller can then never
 * write into pages the kernel gave to someone else.
 */
export interface HoldMemory {
  readonly type: "hold-memory";
  readonly bytes: number;
}
/** The server's name for memory it holds, and where the controller reaches it (VFIO: the IOVA the server mapped it at; 0 otherwise). */
export interface MemoryHandle {
  readonly type: "memory";
  readonly handle: number;
  readonly iova: number;
}
/** The client no longer points the controller at this memory: the server lets it go. */
export interface ReleaseMemory {
  readonly type: "release-memory";
  readonly handle: number;
}
/**
 * Where the controller reaches memory the server holds, when it is not one range (disnvm: the
 * module's bus address of each 4 KiB page): runs of consecutive pages from page `first` of the
 * `total`, as many as one message carries. The client asks for the rest with memory-pages.
 */
export interface Pages {
  readonly type: "pages";
  readonly handle: number;
  /** Bytes held (a multiple of 4096): total / 4096 pages. */
  readonly total: number;
  /** The 4 KiB page of the memory the first run starts at. */
  readonly first: number;
  readonly runs: readonly { readonly bus: number; readonly pages: number }[];
}
/** The bus addresses of held memory `handle`, from its 4 KiB page `first` on. */
export interface MemoryPages {
  readonly type: "memory-pages";
  readonly handle: number;
  readonly first: number;
}
/**
 * Something that happened on the server's side, pushed with request id 0. "reset": the controller
 * was reset (disabled, so no DMA of before can happen any more, then enabled again): the I/O queues
 * `sqids` of this client are gone from it, and every command outstanding on them ended without a
 * result.
 */
export interface ServerEvent {
  readonly type: "event";
  readonly kind: "reset";
  readonly sqids: readonly number[];
  readonly message: string;
}
export interface ResetRequest {
  readonly type: "reset";
}
export interface Bye {
  readonly type: "bye";
}
export interface Ok {
  readonly type: "ok";
}
/** Why a request failed: a ShareErrorReason, "protocol" (malformed), "replayed", or a controller timeout. */
export type ErrorReason = ShareErrorReason | "protocol" | "replayed";
export interface ErrorReply {
  readonly type: "error";
  readonly reason: ErrorReason;
  readonly message: string;
}

export type Request = Hello | AdminRequest | ReserveQueue | CreateQueue | DeleteQueue | AbortRequest | ResetRequest | Bye | HoldMemory | ReleaseMemory | MemoryPages;
export type Reply = HelloOk | AdminOk | QueueIds | MemoryHandle | Pages | Ok | ErrorReply | ServerEvent;
export type Message = Request | Reply;

/** One message with its header fields. */
export interface Frame<M extends Message = Message> {
  readonly id: number;
  readonly timeoutMs: number;
  readonly msg: M;
}

/** A frame whose header checked out, body not yet decoded. */
export interface RawFrame {
  readonly type: number;
  readonly id: number;
  readonly timeoutMs: number;
  readonly body: Uint8Array;
}

const EVENT_KINDS: readonly ServerEvent["kind"][] = ["reset"];

const REASONS: readonly ErrorReason[] = ["protocol", "replayed", "refused", "quota", "peer", "not-owner", "server-gone", "timeout", "version", "failed", "queue-lost"];

const TYPE_OF: Record<Message["type"], number> = {
  hello: MSG_HELLO,
  admin: MSG_ADMIN,
  "reserve-queue": MSG_RESERVE_QUEUE,
  "create-queue": MSG_CREATE_QUEUE,
  "delete-queue": MSG_DELETE_QUEUE,
  abort: MSG_ABORT,
  reset: MSG_RESET,
  bye: MSG_BYE,
  "hold-memory": MSG_HOLD_MEMORY,
  "release-memory": MSG_RELEASE_MEMORY,
  "memory-pages": MSG_MEMORY_PAGES,
  memory: MSG_MEMORY,
  pages: MSG_PAGES,
  event: MSG_EVENT,
  ok: MSG_OK,
  "hello-ok": MSG_HELLO_OK,
  "admin-ok": MSG_ADMIN_OK,
  "queue-ids": MSG_QUEUE_IDS,
  error: MSG_ERROR,
};

export function isRequestType(type: number): boolean {
  return type >= MSG_HELLO && type <= MSG_MEMORY_PAGES;
}

export function typeName(type: number): string {
  for (const [k, v] of Object.entries(TYPE_OF)) if (v === type) return k;
  return `type 0x${type.toString(16).padStart(2, "0")}`;
}

function bad(message: string, violation: string): ShareProtocolError {
  return new ShareProtocolError(message, violation);
}

// ---- body writer and reader ---------------------------------------------------------------

const TWO32 = 0x1_0000_0000;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

class Writer {
  #buf = new Uint8Array(256);
  #dv = new DataView(this.#buf.buffer);
  #len = 0;
  #room(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    const b = new Uint8Array(Math.max(this.#buf.length * 2, this.#len + n));
    b.set(this.#buf.subarray(0, this.#len));
    this.#buf = b;
    this.#dv = new DataView(b.buffer);
  }
  u8(v: number): this {
    this.#room(1);
    this.#dv.setUint8(this.#len, v);
    this.#len += 1;
    return this;
  }
  u16(v: number): this {
    this.#room(2);
    this.#dv.setUint16(this.#len, v, true);
    this.#len += 2;
    return this;
  }
  u32(v: number): this {
    this.#room(4);
    this.#dv.setUint32(this.#len, v >>> 0, true);
    this.#len += 4;
    return this;
  }
  /** A non-negative integer below 2^53 as two dwords. */
  u64(v: number): this {
    return this.u32(v % TWO32).u32(Math.floor(v / TWO32));
  }
  bytes(b: Uint8Array): this {
    this.u32(b.length);
    this.#room(b.length);
    this.#buf.set(b, this.#len);
    this.#len += b.length;
    return this;
  }
  str(s: string): this {
    let b = utf8.encode(s);
    if (b.length > MAX_STRING) {
      // Cut at a character boundary: never inside a UTF-8 sequence (continuation bytes are 10xxxxxx).
      let end = MAX_STRING;
      while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
      b = b.subarray(0, end);
    }
    return this.bytes(b);
  }
  done(): Uint8Array {
    return this.#buf.slice(0, this.#len);
  }
}

class Reader {
  readonly #dv: DataView;
  #at = 0;
  constructor(
    readonly b: Uint8Array,
    readonly what: string,
  ) {
    this.#dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  #need(n: number, field: string): void {
    if (this.#at + n > this.b.length) {
      throw bad(`${this.what}: body of ${this.b.length} bytes ends inside ${field} (needs ${this.#at + n})`, "truncated");
    }
  }
  u8(field: string): number {
    this.#need(1, field);
    return this.#dv.getUint8(this.#at++);
  }
  u16(field: string): number {
    this.#need(2, field);
    const v = this.#dv.getUint16(this.#at, true);
    this.#at += 2;
    return v;
  }
  u32(field: string): number {
    this.#need(4, field);
    const v = this.#dv.getUint32(this.#at, true);
    this.#at += 4;
    return v;
  }
  u64(field: string): number {
    const lo = this.u32(field);
    const hi = this.u32(field);
    if (hi >= 0x20_0000) throw bad(`${this.what}: ${field} 0x${hi.toString(16)}${lo.toString(16).padStart(8, "0")} is past 2^53`, "field");
    return hi * TWO32 + lo;
  }
  bytes(field: string, max: number): Uint8Array {
    const n = this.u32(`${field} length`);
    if (n > max) throw bad(`${this.what}: ${field} of ${n} bytes, at most ${max}`, "oversized");
    this.#need(n, field);
    const out = this.b.slice(this.#at, this.#at + n);
    this.#at += n;
    return out;
  }
  str(field: string): string {
    const b = this.bytes(field, MAX_STRING);
    try {
      return fromUtf8.decode(b);
    } catch {
      throw bad(`${this.what}: ${field} is not UTF-8`, "utf8");
    }
  }
  end(): void {
    if (this.#at !== this.b.length) throw bad(`${this.what}: ${this.b.length - this.#at} bytes after its last field`, "trailing");
  }
}

// ---- encode -------------------------------------------------------------------------------

function encodeBody(m: Message): Uint8Array {
  const w = new Writer();
  switch (m.type) {
    case "hello":
      return w.u32(m.pid).str(m.label).done();
    case "hello-ok":
      return w.u32(m.clientId).u32(m.capLo).u32(m.capHi).u32(m.vs).u32(m.timeoutMs).u16(m.maxQueues).str(m.backend).str(m.bdf).str(m.name).u32(m.serverPid).u64(m.bar0Offset).u32(m.bar0Size).done();
    case "admin": {
      if (m.sqe.length !== 16) throw bad(`admin: an SQE is 16 dwords, got ${m.sqe.length}`, "field");
      for (let i = 0; i < 16; i++) w.u32(m.sqe[i]!);
      return w.u32(m.toHost).bytes(m.toController ?? new Uint8Array(0)).done();
    }
    case "admin-ok":
      return w.u32(m.status).u32(m.dw0).u32(m.dw1).bytes(m.data ?? new Uint8Array(0)).done();
    case "reserve-queue":
      return w.u32(m.entries).done();
    case "queue-ids":
      return w.u16(m.sqid).u16(m.cqid).done();
    case "create-queue":
      return w.u16(m.sqid).u16(m.cqid).u32(m.entries).u64(m.sqBus).u64(m.cqBus).done();
    case "delete-queue":
      return w.u16(m.sqid).done();
    case "hold-memory":
      return w.u64(m.bytes).done();
    case "release-memory":
      return w.u32(m.handle).done();
    case "memory":
      return w.u32(m.handle).u64(m.iova).done();
    case "memory-pages":
      return w.u32(m.handle).u32(m.first).done();
    case "pages": {
      w.u32(m.handle).u64(m.total).u32(m.first).u32(m.runs.length);
      for (const r of m.runs) w.u64(r.bus).u32(r.pages);
      return w.done();
    }
    case "event": {
      w.u8(EVENT_KINDS.indexOf(m.kind)).u32(m.sqids.length);
      for (const q of m.sqids) w.u16(q);
      return w.str(m.message).done();
    }
    case "abort":
      return w.u16(m.sqid).u16(m.cid).done();
    case "reset":
    case "bye":
    case "ok":
      return new Uint8Array(0);
    case "error":
      return w.u16(REASONS.indexOf(m.reason)).str(m.message).done();
  }
}

/** The bytes of one frame. Throws ShareProtocolError for what parse() would refuse. */
export function encode(f: Frame): Uint8Array {
  if (!Number.isInteger(f.id) || f.id < 0 || f.id > 0xffff_ffff) throw bad(`request id ${f.id}: a u32`, "id");
  if (!Number.isInteger(f.timeoutMs) || f.timeoutMs < 0 || f.timeoutMs > MAX_TIMEOUT_MS) throw bad(`timeout ${f.timeoutMs} ms: 0 to ${MAX_TIMEOUT_MS}`, "timeout");
  checkMessage(f.msg);
  const body = encodeBody(f.msg);
  if (body.length > MAX_BODY) throw bad(`${f.msg.type}: body of ${body.length} bytes, at most ${MAX_BODY}`, "oversized");
  const out = new Uint8Array(HEADER_SIZE + body.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, SHARE_MAGIC, true);
  dv.setUint8(4, SHARE_VERSION);
  dv.setUint8(5, TYPE_OF[f.msg.type]);
  dv.setUint16(6, 0, true);
  dv.setUint32(8, f.id, true);
  dv.setUint32(12, f.timeoutMs, true);
  dv.setUint32(16, body.length, true);
  dv.setUint32(20, 0, true);
  out.set(body, HEADER_SIZE);
  return out;
}

// ---- parse --------------------------------------------------------------------------------

/**
 * The header at the start of `b` (at least HEADER_SIZE bytes): type, id, timeout, body length.
 * ShareProtocolError for bad magic, another version, set flags or reserved bits, a length past
 * MAX_BODY, an unknown type, a request without deadline. A stream cannot be read past any of
 * these: the connection is closed.
 */
export function parseHeader(b: Uint8Array): { type: number; id: number; timeoutMs: number; length: number } {
  if (b.length < HEADER_SIZE) throw bad(`a frame header is ${HEADER_SIZE} bytes, got ${b.length}`, "truncated");
  const dv = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  const magic = dv.getUint32(0, true);
  if (magic !== SHARE_MAGIC) throw bad(`bad magic 0x${magic.toString(16).padStart(8, "0")} (not a libnvm sharing peer?)`, "magic");
  const version = dv.getUint8(4);
  if (version !== SHARE_VERSION) throw bad(`protocol version ${version}; this libnvm speaks ${SHARE_VERSION}: run the same libnvm on the server and its clients`, "version");
  const type = dv.getUint8(5);
  const flags = dv.getUint16(6, true);
  const id = dv.getUint32(8, true);
  const timeoutMs = dv.getUint32(12, true);
  const length = dv.getUint32(16, true);
  const rsvd = dv.getUint32(20, true);
  if (flags !== 0 || rsvd !== 0) throw bad(`flags 0x${flags.toString(16)} / reserved 0x${rsvd.toString(16)} must be 0 in version ${SHARE_VERSION}`, "reserved");
  if (length > MAX_BODY) throw bad(`${typeName(type)}: body of ${length} bytes, at most ${MAX_BODY}`, "oversized");
  if (!(type in NAMES)) throw bad(`unknown message ${typeName(type)}`, "type");
  if (isRequestType(type)) {
    if (id === 0) throw bad(`${typeName(type)}: request id 0 (ids start at 1)`, "id");
    if (timeoutMs === 0 || timeoutMs > MAX_TIMEOUT_MS) throw bad(`${typeName(type)}: deadline of ${timeoutMs} ms; every request has one, 1 to ${MAX_TIMEOUT_MS}`, "timeout");
  }
  return { type, id, timeoutMs, length };
}

const NAMES: Record<number, Message["type"]> = Object.fromEntries(Object.entries(TYPE_OF).map(([k, v]) => [v, k as Message["type"]]));

/** Decode the body of a frame whose header parseHeader() accepted. ShareProtocolError when it does not fit its type. */
export function decodeBody(raw: RawFrame): Message {
  const what = typeName(raw.type);
  const r = new Reader(raw.body, what);
  let m: Message;
  switch (raw.type) {
    case MSG_HELLO:
      m = { type: "hello", pid: r.u32("pid"), label: r.str("label") };
      break;
    case MSG_HELLO_OK:
      m = {
        type: "hello-ok",
        clientId: r.u32("clientId"),
        capLo: r.u32("CAP"),
        capHi: r.u32("CAP"),
        vs: r.u32("VS"),
        timeoutMs: r.u32("timeoutMs"),
        maxQueues: r.u16("maxQueues"),
        backend: r.str("backend"),
        bdf: r.str("bdf"),
        name: r.str("name"),
        serverPid: r.u32("serverPid"),
        bar0Offset: r.u64("BAR0 offset"),
        bar0Size: r.u32("BAR0 size"),
      };
      break;
    case MSG_ADMIN: {
      const sqe = new Uint32Array(16);
      for (let i = 0; i < 16; i++) sqe[i] = r.u32(`CDW${i}`);
      const toHost = r.u32("toHost");
      const data = r.bytes("data", MAX_ADMIN_WRITE);
      m = data.length > 0 ? { type: "admin", sqe, toHost, toController: data } : { type: "admin", sqe, toHost };
      break;
    }
    case MSG_ADMIN_OK: {
      const status = r.u32("status");
      const dw0 = r.u32("DW0");
      const dw1 = r.u32("DW1");
      const data = r.bytes("data", MAX_ADMIN_DATA);
      m = data.length > 0 ? { type: "admin-ok", status, dw0, dw1, data } : { type: "admin-ok", status, dw0, dw1 };
      break;
    }
    case MSG_RESERVE_QUEUE:
      m = { type: "reserve-queue", entries: r.u32("entries") };
      break;
    case MSG_QUEUE_IDS:
      m = { type: "queue-ids", sqid: r.u16("SQID"), cqid: r.u16("CQID") };
      break;
    case MSG_CREATE_QUEUE:
      m = { type: "create-queue", sqid: r.u16("SQID"), cqid: r.u16("CQID"), entries: r.u32("entries"), sqBus: r.u64("SQ address"), cqBus: r.u64("CQ address") };
      break;
    case MSG_DELETE_QUEUE:
      m = { type: "delete-queue", sqid: r.u16("SQID") };
      break;
    case MSG_ABORT:
      m = { type: "abort", sqid: r.u16("SQID"), cid: r.u16("CID") };
      break;
    case MSG_HOLD_MEMORY:
      m = { type: "hold-memory", bytes: r.u64("bytes") };
      break;
    case MSG_RELEASE_MEMORY:
      m = { type: "release-memory", handle: r.u32("handle") };
      break;
    case MSG_MEMORY:
      m = { type: "memory", handle: r.u32("handle"), iova: r.u64("IOVA") };
      break;
    case MSG_MEMORY_PAGES:
      m = { type: "memory-pages", handle: r.u32("handle"), first: r.u32("first page") };
      break;
    case MSG_PAGES: {
      const handle = r.u32("handle");
      const total = r.u64("total");
      const first = r.u32("first page");
      const n = r.u32("runs");
      if (n > MAX_RUNS) throw bad(`pages: ${n} runs, at most ${MAX_RUNS}`, "oversized");
      const runs: { bus: number; pages: number }[] = [];
      for (let i = 0; i < n; i++) runs.push({ bus: r.u64("bus address"), pages: r.u32("run pages") });
      m = { type: "pages", handle, total, first, runs };
      break;
    }
    case MSG_EVENT: {
      const code = r.u8("kind");
      const kind = EVENT_KINDS[code];
      if (kind === undefined) throw bad(`event: kind ${code} unknown`, "field");
      const n = r.u32("queues");
      if (n > 65535) throw bad(`event: ${n} queues, at most 65535`, "oversized");
      const sqids: number[] = [];
      for (let i = 0; i < n; i++) sqids.push(r.u16("SQID"));
      m = { type: "event", kind, sqids, message: r.str("message") };
      break;
    }
    case MSG_RESET:
      m = { type: "reset" };
      break;
    case MSG_BYE:
      m = { type: "bye" };
      break;
    case MSG_OK:
      m = { type: "ok" };
      break;
    case MSG_ERROR: {
      const code = r.u16("reason");
      const reason = REASONS[code];
      if (reason === undefined) throw bad(`error: reason code ${code} unknown`, "field");
      m = { type: "error", reason, message: r.str("message") };
      break;
    }
    default:
      throw bad(`unknown message ${what}`, "type");
  }
  r.end();
  checkMessage(m);
  return m;
}

/** Field rules beyond the layout, the same on both sides. */
function checkMessage(m: Message): void {
  const field = (ok: boolean, text: string) => {
    if (!ok) throw bad(`${m.type}: ${text}`, "field");
  };
  switch (m.type) {
    case "admin":
      field(m.toHost <= MAX_ADMIN_DATA, `toHost ${m.toHost} bytes, at most ${MAX_ADMIN_DATA}`);
      field((m.toController?.length ?? 0) <= MAX_ADMIN_WRITE, `${m.toController?.length} bytes of data, at most ${MAX_ADMIN_WRITE}`);
      field(!(m.toHost > 0 && (m.toController?.length ?? 0) > 0), "data both ways");
      break;
    case "admin-ok":
      field(m.status <= 0x7fff, `status 0x${m.status.toString(16)} is 15 bits`);
      field((m.data?.length ?? 0) <= MAX_ADMIN_DATA, `${m.data?.length} bytes of data, at most ${MAX_ADMIN_DATA}`);
      break;
    case "reserve-queue":
    case "create-queue":
      field(m.entries >= 2 && m.entries <= 65536, `${m.entries} entries: 2 to 65536`);
      if (m.type === "create-queue") {
        field(m.sqid >= 1 && m.cqid >= 1, `SQID ${m.sqid} / CQID ${m.cqid}: I/O queues are 1 and up`);
        field(m.sqBus % 4096 === 0 && m.cqBus % 4096 === 0 && m.sqBus > 0 && m.cqBus > 0, `queue addresses 0x${m.sqBus.toString(16)} / 0x${m.cqBus.toString(16)} must be non-zero and page aligned`);
      }
      break;
    case "queue-ids":
    case "delete-queue":
    case "abort":
      field(m.sqid >= 1, `SQID ${m.sqid}: I/O queues are 1 and up`);
      break;
    case "hold-memory":
      field(m.bytes > 0 && m.bytes % 4096 === 0, `${m.bytes} bytes: whole pages, at least one`);
      break;
    case "pages": {
      field(m.total > 0 && m.total % 4096 === 0, `${m.total} bytes: whole pages, at least one`);
      field(m.runs.length <= MAX_RUNS, `${m.runs.length} runs, at most ${MAX_RUNS}`);
      let pages = 0;
      for (const r of m.runs) {
        field(r.pages >= 1 && r.bus > 0 && r.bus % 4096 === 0, `a run of ${r.pages} pages at 0x${r.bus.toString(16)}: at least one page, at a non-zero page-aligned address`);
        pages += r.pages;
      }
      field(m.first * 4096 + pages * 4096 <= m.total, `runs from page ${m.first} over ${pages} pages pass the end of ${m.total} bytes`);
      field(m.runs.length > 0 || m.first * 4096 === m.total, `no runs before the end of the memory (page ${m.first} of ${m.total / 4096})`);
      break;
    }
    case "event":
      field(m.sqids.every((q) => q >= 1 && q <= 0xffff), `SQIDs ${m.sqids.join(", ")}: I/O queues are 1 to 65535`);
      break;
    default:
      break;
  }
}

/** Parse exactly one frame (header and body, nothing after). */
export function parse(b: Uint8Array): Frame {
  const h = parseHeader(b);
  if (b.length < HEADER_SIZE + h.length) throw bad(`${typeName(h.type)}: ${b.length - HEADER_SIZE} of ${h.length} body bytes`, "truncated");
  if (b.length > HEADER_SIZE + h.length) throw bad(`${typeName(h.type)}: ${b.length - HEADER_SIZE - h.length} bytes after the frame`, "trailing");
  return { id: h.id, timeoutMs: h.timeoutMs, msg: decodeBody({ type: h.type, id: h.id, timeoutMs: h.timeoutMs, body: b.subarray(HEADER_SIZE) }) };
}

/**
 * Frames out of a byte stream: push() what arrived, next() each complete frame. A header that
 * breaks the rules throws at once (without waiting for its body), and the reader stays failed:
 * nothing after it can be trusted.
 */
export class FrameReader {
  #buf = new Uint8Array(4096);
  #len = 0;
  #failed: ShareProtocolError | undefined;

  /** Bytes held that are not a whole frame yet. */
  get pending(): number {
    return this.#len;
  }

  push(chunk: Uint8Array): void {
    if (this.#len + chunk.length > this.#buf.length) {
      const b = new Uint8Array(Math.max(this.#buf.length * 2, this.#len + chunk.length));
      b.set(this.#buf.subarray(0, this.#len));
      this.#buf = b;
    }
    this.#buf.set(chunk, this.#len);
    this.#len += chunk.length;
  }

  /** The next complete frame, or undefined until more bytes arrive. */
  next(): RawFrame | undefined {
    if (this.#failed) throw this.#failed;
    if (this.#len < HEADER_SIZE) return undefined;
    let h: ReturnType<typeof parseHeader>;
    try {
      h = parseHeader(this.#buf.subarray(0, HEADER_SIZE));
    } catch (e) {
      this.#failed = e as ShareProtocolError;
      throw e;
    }
    const total = HEADER_SIZE + h.length;
    if (this.#len < total) return undefined;
    const body = this.#buf.slice(HEADER_SIZE, total);
    this.#buf.copyWithin(0, total, this.#len);
    this.#len -= total;
    return { type: h.type, id: h.id, timeoutMs: h.timeoutMs, body };
  }
}

/**
 * The server's side of request ids: each must be larger than the last one of its connection. A
 * request seen again (a replay, or a client that lost count) is refused with "replayed".
 */
export class RequestIds {
  #last = 0;
  accept(id: number, type: number): void {
    if (id <= this.#last) throw bad(`${typeName(type)} with request id ${id}: ids must increase (the last was ${this.#last}); a replayed request is not run again`, "replayed");
    this.#last = id;
  }
}
