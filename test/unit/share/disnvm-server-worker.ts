/**
 * A Worker that plays a disnvm server by hand for disnvm-client.test.ts: it passes a memfd as the
 * "BAR descriptor" (the client maps it as it would the module's: page 0 read-only, the rest
 * read-write) and answers hold-memory with made-up bus addresses, one run per page, so a large
 * allocation needs several pages messages. It serves one client, then reports what it saw.
 */
import { parentPort, workerData } from "node:worker_threads";
import { toArrayBuffer } from "bun:ffi";
import { native } from "../../../lib/native.ts";
import { UnixListener } from "../../../lib/share/link.ts";
import { decodeBody, encode, FrameReader, type Reply, type Request } from "../../../lib/share/protocol.ts";
import { pageRuns, pagesFrom } from "../../../lib/share/server.ts";

const { path, bar0Size } = workerData as { path: string; bar0Size: number };
const n = native();
const listener = UnixListener.listen(path, 0o600);
parentPort!.postMessage({ listening: true });

/** Page i of memory `handle` is at 0x10_0000_0000 + handle * 2^32 + 2 * i * 4096: never two in a row. */
const busOf = (handle: number, page: number) => 0x10_0000_0000 + handle * 0x1_0000_0000 + 2 * page * 4096;
const held = new Map<number, { fd: number; bytes: number }>();
const seen: string[] = [];
let nextHandle = 1;

const out = n.nvm_host_alloc(8)!;
const bar = n.nvm_dma_alloc_fd(bar0Size, 2, out)!;
const barFd = new Int32Array(toArrayBuffer(out, 0, 4))[0]!;
new Uint32Array(toArrayBuffer(bar, 0, 8))[0] = 0x0f0103ff; // CAP, low dword, where the client reads it

const end = Date.now() + 20_000;
let conn: ReturnType<UnixListener["accept"]>;
while (!(conn = listener.accept()) && Date.now() < end) await Bun.sleep(5);
const reader = new FrameReader();
const fds: number[] = [];
let done = false;
while (conn && !done && Date.now() < end) {
  let got: { bytes: Uint8Array; fds: number[] };
  try {
    got = conn.conn.recvWithFds(20_000);
  } catch {
    break; // the client went away
  }
  fds.push(...got.fds);
  if (got.bytes.length) reader.push(got.bytes);
  for (let raw = reader.next(); raw; raw = reader.next()) {
    const m = decodeBody(raw) as Request;
    seen.push(m.type === "memory-pages" ? `memory-pages ${m.handle} ${m.first}` : m.type);
    let reply: Reply;
    let fd: number | undefined;
    switch (m.type) {
      case "hello":
        reply = { type: "hello-ok", clientId: 1, capLo: 0x0f0103ff, capHi: 0x20, vs: 0x10400, timeoutMs: 1000, maxQueues: 4, backend: "disnvm", bdf: "0000:00:00.0", name: "/dev/disnvm9", serverPid: process.pid, bar0Offset: 0, bar0Size };
        fd = barFd;
        break;
      case "hold-memory": {
        const handle = nextHandle++;
        held.set(handle, { fd: fds.shift()!, bytes: m.bytes });
        const pages = new Uint32Array((2 * m.bytes) / 4096);
        for (let i = 0; i < m.bytes / 4096; i++) {
          const a = busOf(handle, i);
          pages[2 * i] = a % 0x1_0000_0000;
          pages[2 * i + 1] = Math.floor(a / 0x1_0000_0000);
        }
        reply = pagesFrom(handle, m.bytes, pageRuns(pages), 0);
        break;
      }
      case "memory-pages": {
        const h = held.get(m.handle)!;
        const pages = new Uint32Array((2 * h.bytes) / 4096);
        for (let i = 0; i < h.bytes / 4096; i++) {
          const a = busOf(m.handle, i);
          pages[2 * i] = a % 0x1_0000_0000;
          pages[2 * i + 1] = Math.floor(a / 0x1_0000_0000);
        }
        reply = pagesFrom(m.handle, h.bytes, pageRuns(pages), m.first);
        break;
      }
      case "release-memory": {
        const h = held.get(m.handle);
        if (h) n.nvm_unix_close(h.fd);
        held.delete(m.handle);
        reply = { type: "ok" };
        break;
      }
      case "bye":
        reply = { type: "ok" };
        done = true;
        break;
      default:
        reply = { type: "error", reason: "refused", message: `not in this fake: ${m.type}` };
    }
    const bytes = encode({ id: raw.id, timeoutMs: 0, msg: reply });
    if (fd !== undefined) conn.conn.sendWithFd(bytes, fd, 1000);
    else conn.conn.send(bytes, 1000);
  }
}
conn?.conn.close();
listener.close();
parentPort!.postMessage({ seen, stillHeld: held.size });
