/**
 * The sharing protocol (lib/share/protocol.ts): every message round-trips; malformed, truncated,
 * oversized and replayed frames are ShareProtocolError with a stable `violation`; the stream
 * reader takes frames cut anywhere; and a deterministic fuzz loop (LIBNVM_FUZZ_SEED,
 * LIBNVM_FUZZ_SCALE as in spec/fuzz.test.ts) never gets anything but a frame or that error.
 */
import { describe, expect, test } from "bun:test";
import { ShareProtocolError } from "../../../lib/errors.ts";
import {
  decodeBody,
  encode,
  FrameReader,
  HEADER_SIZE,
  MAX_ADMIN_DATA,
  MAX_BODY,
  MAX_RUNS,
  parse,
  parseHeader,
  RequestIds,
  SHARE_MAGIC,
  type Frame,
  type Message,
} from "../../../lib/share/protocol.ts";

const SEED = (() => {
  const env = process.env.LIBNVM_FUZZ_SEED;
  const n = env === undefined ? 0x73686172 : Number(env); // "shar"
  if (!Number.isSafeInteger(n)) throw new Error(`LIBNVM_FUZZ_SEED=${env} is not an integer`);
  return n >>> 0;
})();
const SCALE = Math.max(0.01, Number(process.env.LIBNVM_FUZZ_SCALE ?? 1) || 1);

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sqe = Uint32Array.from({ length: 16 }, (_, i) => (i === 0 ? 0x06 : i === 10 ? 1 : i * 0x01010101));
const samples: Message[] = [
  { type: "hello", pid: 4242, label: "bun examples/identify.ts" },
  { type: "hello-ok", clientId: 7, capLo: 0x0f0103ff, capHi: 0x20, vs: 0x10400, timeoutMs: 10_000, maxQueues: 8, backend: "sysfs", bdf: "0000:05:00.0", name: "0000:05:00.0", serverPid: 1, bar0Offset: 0x10_0000_0000, bar0Size: 16384 },
  { type: "admin", sqe, toHost: 4096 },
  { type: "admin", sqe, toHost: 0, toController: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) },
  { type: "admin-ok", status: 0, dw0: 0xdeadbeef, dw1: 1 },
  { type: "admin-ok", status: 0x4002, dw0: 0, dw1: 0, data: new Uint8Array(4096).fill(0xa5) },
  { type: "reserve-queue", entries: 256 },
  { type: "queue-ids", sqid: 3, cqid: 3 },
  { type: "create-queue", sqid: 3, cqid: 4, entries: 1024, sqBus: 0x1_2345_6000, cqBus: 0x1f_ffff_f000 },
  { type: "delete-queue", sqid: 3 },
  { type: "abort", sqid: 3, cid: 0xffff },
  { type: "hold-memory", bytes: 4 << 20 },
  { type: "release-memory", handle: 3 },
  { type: "memory", handle: 3, iova: 0x1_0000_0000 },
  { type: "memory-pages", handle: 3, first: 4096 },
  { type: "pages", handle: 3, total: 8 << 20, first: 0, runs: [{ bus: 0x1_0000_0000, pages: 512 }, { bus: 0x7f_ffe0_0000, pages: 1024 }, { bus: 0x1000, pages: 1 }] },
  { type: "pages", handle: 4, total: 4096, first: 1, runs: [] },
  { type: "event", kind: "reset", sqids: [3, 65535], message: "client 2 (pid 77) asked for a reset" },
  { type: "event", kind: "reset", sqids: [], message: "" },
  { type: "reset" },
  { type: "bye" },
  { type: "ok" },
  { type: "error", reason: "refused", message: "Format NVM(0x80): refused unless --allow=format" },
  { type: "error", reason: "server-gone", message: "ünïcode ✓" },
];
const isRequest = (m: Message) => ["hello", "admin", "reserve-queue", "create-queue", "delete-queue", "abort", "reset", "bye", "hold-memory", "release-memory", "memory-pages"].includes(m.type);
const frame = (m: Message, id = 1): Frame => ({ id, timeoutMs: isRequest(m) ? 5000 : 0, msg: m });

function violation(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof ShareProtocolError) return e.violation;
    throw e;
  }
  throw new Error("no ShareProtocolError");
}

describe("encode / parse", () => {
  test("every message type round-trips with its id and deadline", () => {
    for (const [i, m] of samples.entries()) {
      const f = frame(m, i + 1);
      const b = encode(f);
      expect(new DataView(b.buffer).getUint32(0, true)).toBe(SHARE_MAGIC);
      expect(b.length).toBe(HEADER_SIZE + new DataView(b.buffer).getUint32(16, true));
      expect(parse(b)).toEqual(f);
    }
  });

  test("the header layout: magic, version 2, type, id, deadline, length, reserved", () => {
    const b = encode({ id: 0x01020304, timeoutMs: 1500, msg: { type: "delete-queue", sqid: 9 } });
    expect([...b.subarray(0, HEADER_SIZE)]).toEqual([0x4c, 0x4e, 0x56, 0x53, 2, 0x05, 0, 0, 4, 3, 2, 1, 0xdc, 0x05, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    expect([...b.subarray(HEADER_SIZE)]).toEqual([9, 0]);
  });

  test("bad magic, another version, set flags or reserved bits: typed, named", () => {
    const good = encode(frame({ type: "bye" }));
    const bad = (at: number, v: number) => {
      const b = good.slice();
      b[at] = v;
      return b;
    };
    expect(violation(() => parse(bad(0, 0x4d)))).toBe("magic");
    expect(violation(() => parse(bad(4, 1)))).toBe("version");
    expect(violation(() => parse(bad(4, 3)))).toBe("version");
    expect(violation(() => parse(bad(6, 1)))).toBe("reserved");
    expect(violation(() => parse(bad(23, 1)))).toBe("reserved");
    expect(violation(() => parse(bad(5, 0x42)))).toBe("type");
  });

  test("requests need an id from 1 and a deadline of 1 ms to 24 h; replies carry 0", () => {
    expect(violation(() => parse(encode({ id: 0, timeoutMs: 100, msg: { type: "bye" } })))).toBe("id");
    const b = encode(frame({ type: "bye" }));
    new DataView(b.buffer).setUint32(12, 0, true);
    expect(violation(() => parse(b))).toBe("timeout");
    expect(violation(() => encode({ id: 1, timeoutMs: 25 * 3600 * 1000, msg: { type: "bye" } }))).toBe("timeout");
    expect(parse(encode({ id: 0, timeoutMs: 0, msg: { type: "ok" } })).id).toBe(0);
  });

  test("truncated: a header cut short, a body shorter than its length or than its type's fields", () => {
    const b = encode(frame(samples[8]!));
    expect(violation(() => parse(b.subarray(0, 10)))).toBe("truncated");
    expect(violation(() => parse(b.subarray(0, b.length - 1)))).toBe("truncated");
    // A consistent header over a body too short for create-queue's fields.
    const short = b.slice(0, HEADER_SIZE + 6);
    new DataView(short.buffer).setUint32(16, 6, true);
    expect(violation(() => parse(short))).toBe("truncated");
    // And a string whose length runs past the body.
    const hello = encode(frame(samples[0]!));
    new DataView(hello.buffer).setUint32(HEADER_SIZE + 4, 1000, true);
    expect(violation(() => parse(hello))).toBe("truncated");
  });

  test("trailing bytes after the fields, or after the frame", () => {
    const b = encode(frame({ type: "delete-queue", sqid: 1 }));
    const longer = new Uint8Array(b.length + 2);
    longer.set(b);
    new DataView(longer.buffer).setUint32(16, 4, true);
    expect(violation(() => parse(longer))).toBe("trailing");
    const extra = new Uint8Array(b.length + 1);
    extra.set(b);
    expect(violation(() => parse(extra))).toBe("trailing");
  });

  test("oversized: a length past MAX_BODY is refused from the header alone; data past its limit too", () => {
    const h = encode(frame({ type: "bye" })).slice(0, HEADER_SIZE);
    new DataView(h.buffer).setUint32(16, MAX_BODY + 1, true);
    expect(violation(() => parseHeader(h))).toBe("oversized");
    const r = new FrameReader();
    r.push(h);
    expect(violation(() => r.next())).toBe("oversized");
    // The reader stays failed: nothing after a broken header can be trusted.
    r.push(encode(frame({ type: "bye" })));
    expect(violation(() => r.next())).toBe("oversized");
    expect(violation(() => encode(frame({ type: "admin", sqe, toHost: MAX_ADMIN_DATA + 4 })))).toBe("field");
    expect(violation(() => encode(frame({ type: "admin", sqe, toHost: 0, toController: new Uint8Array(4097) })))).toBe("field");
    const ok = encode(frame({ type: "admin-ok", status: 0, dw0: 0, dw1: 0, data: new Uint8Array(MAX_ADMIN_DATA) }));
    expect(parse(ok).msg).toMatchObject({ type: "admin-ok" });
  });

  test("fields out of range: queue ids 0, unaligned ring addresses, a 16-bit status, unknown error reasons", () => {
    expect(violation(() => encode(frame({ type: "create-queue", sqid: 0, cqid: 1, entries: 2, sqBus: 4096, cqBus: 8192 })))).toBe("field");
    expect(violation(() => encode(frame({ type: "create-queue", sqid: 1, cqid: 1, entries: 2, sqBus: 4097, cqBus: 8192 })))).toBe("field");
    expect(violation(() => encode(frame({ type: "create-queue", sqid: 1, cqid: 1, entries: 1, sqBus: 4096, cqBus: 8192 })))).toBe("field");
    expect(violation(() => encode(frame({ type: "admin-ok", status: 0x8000, dw0: 0, dw1: 0 })))).toBe("field");
    expect(violation(() => encode(frame({ type: "hold-memory", bytes: 4095 })))).toBe("field");
    const e = encode(frame({ type: "error", reason: "quota", message: "x" }));
    new DataView(e.buffer).setUint16(HEADER_SIZE, 99, true);
    expect(violation(() => parse(e))).toBe("field");
    const big = encode(frame({ type: "create-queue", sqid: 1, cqid: 1, entries: 2, sqBus: 4096, cqBus: 8192 }));
    new DataView(big.buffer).setUint32(HEADER_SIZE + 12, 0x40_0000, true); // SQ address high dword past 2^53
    expect(violation(() => parse(big))).toBe("field");
  });

  test("pages and events: runs inside the memory, aligned, non-empty; at most MAX_RUNS; known event kinds only", () => {
    const pages = (first: number, runs: { bus: number; pages: number }[], total = 16 * 4096) => encode(frame({ type: "pages", handle: 1, total, first, runs }));
    expect(violation(() => pages(0, [{ bus: 0x1000, pages: 17 }]))).toBe("field"); // past the end
    expect(violation(() => pages(15, [{ bus: 0x1000, pages: 2 }]))).toBe("field");
    expect(violation(() => pages(0, [{ bus: 0x1800, pages: 1 }]))).toBe("field"); // unaligned
    expect(violation(() => pages(0, [{ bus: 0, pages: 1 }]))).toBe("field"); // address 0
    expect(violation(() => pages(0, [{ bus: 0x1000, pages: 0 }]))).toBe("field"); // empty run
    expect(violation(() => pages(3, []))).toBe("field"); // no runs before the end
    expect(violation(() => pages(0, [{ bus: 0x1000, pages: 1 }], 4095))).toBe("field");
    // A count of runs past MAX_RUNS is refused before the runs are read.
    const many = pages(0, [{ bus: 0x1000, pages: 1 }]);
    new DataView(many.buffer).setUint32(HEADER_SIZE + 16, MAX_RUNS + 1, true);
    expect(violation(() => parse(many))).toBe("oversized");
    const ev = encode(frame({ type: "event", kind: "reset", sqids: [1], message: "" }));
    ev[HEADER_SIZE] = 7;
    expect(violation(() => parse(ev))).toBe("field");
    expect(violation(() => encode(frame({ type: "event", kind: "reset", sqids: [0], message: "" })))).toBe("field");
  });
});

describe("FrameReader", () => {
  test("frames cut at every byte boundary come out whole, in order", () => {
    const all = samples.map((m, i) => encode(frame(m, i + 1)));
    const stream = new Uint8Array(all.reduce((n, b) => n + b.length, 0));
    let at = 0;
    for (const b of all) {
      stream.set(b, at);
      at += b.length;
    }
    for (const step of [1, 3, 7, 24, 25, 4096, stream.length]) {
      const r = new FrameReader();
      const got: Message[] = [];
      for (let i = 0; i < stream.length; i += step) {
        r.push(stream.subarray(i, i + step));
        for (let f = r.next(); f; f = r.next()) got.push(decodeBody(f));
      }
      expect(got).toEqual(samples);
      expect(r.pending).toBe(0);
    }
  });
});

describe("request ids", () => {
  test("ids must increase: a replayed or older id is 'replayed', a later one passes", () => {
    const ids = new RequestIds();
    ids.accept(1, 0x01);
    ids.accept(2, 0x02);
    expect(violation(() => ids.accept(2, 0x02))).toBe("replayed");
    expect(violation(() => ids.accept(1, 0x02))).toBe("replayed");
    ids.accept(10, 0x02);
    expect(violation(() => ids.accept(9, 0x02))).toBe("replayed");
  });
});

describe("fuzz", () => {
  const cases = Math.max(1, Math.round(3000 * SCALE));
  test(`${cases} random, bit-flipped, cut and spliced frames: a frame or ShareProtocolError, never anything else (seed ${SEED})`, () => {
    const valid = samples.map((m, i) => encode(frame(m, i + 1)));
    for (let c = 0; c < cases; c++) {
      const rnd = mulberry32((SEED ^ Math.imul(c + 1, 0x9e3779b1)) >>> 0);
      const pick = valid[Math.floor(rnd() * valid.length)]!;
      let input: Uint8Array;
      const kind = c % 5;
      if (kind === 0) {
        input = new Uint8Array(Math.floor(rnd() * 200));
        for (let i = 0; i < input.length; i++) input[i] = Math.floor(rnd() * 256);
        if (input.length >= 8 && rnd() < 0.5) input.set(pick.subarray(0, 8)); // a valid start, then noise
      } else if (kind === 1) {
        input = pick.slice();
        const flips = 1 + Math.floor(rnd() * 4);
        for (let i = 0; i < flips; i++) input[Math.floor(rnd() * input.length)]! ^= 1 << Math.floor(rnd() * 8);
      } else if (kind === 2) {
        input = pick.slice(0, Math.floor(rnd() * pick.length));
      } else if (kind === 3) {
        input = pick.slice();
        new DataView(input.buffer).setUint32(16, Math.floor(rnd() * 0x1_0000_0000), true);
      } else {
        const other = valid[Math.floor(rnd() * valid.length)]!;
        input = new Uint8Array(pick.length);
        input.set(pick.subarray(0, HEADER_SIZE));
        input.set(other.subarray(HEADER_SIZE, Math.min(other.length, pick.length)), HEADER_SIZE);
      }
      try {
        const f = parse(input);
        expect(typeof f.msg.type).toBe("string");
        // Whatever parses encodes back to the same bytes.
        expect([...encode(f)]).toEqual([...input]);
      } catch (e) {
        if (!(e instanceof ShareProtocolError)) throw new Error(`case ${c} (seed ${SEED}): ${String(e)} for ${Buffer.from(input).toString("hex")}`);
      }
      // The stream reader too, fed in pieces.
      const r = new FrameReader();
      try {
        for (let i = 0; i < input.length; i += 5) {
          r.push(input.subarray(i, i + 5));
          for (let f = r.next(); f; f = r.next()) decodeBody(f);
        }
      } catch (e) {
        if (!(e instanceof ShareProtocolError)) throw new Error(`reader, case ${c} (seed ${SEED}): ${String(e)}`);
      }
    }
  });
});
