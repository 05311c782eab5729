/**
 * What the dma-buf guest suite shares: dma-bufs from the exporters a guest without a GPU has
 * (udmabuf over a memfd, the system dma-heap), made by the test-only helper udmabuf.c (built by
 * test/vm/setup.sh), and the kernel's view of who is attached to a dma-buf
 * (/sys/kernel/debug/dma_buf/bufinfo). Everything here fails, never skips, when a piece is missing.
 */
import { dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";
import { closeSync, existsSync, fstatSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { native } from "../../lib/index.ts";
import { BDF } from "../hw-disnvm/common.ts";

const HELPER = join(import.meta.dir, "build", "libudmabuf-test.so");
const BUFINFO = "/sys/kernel/debug/dma_buf/bufinfo";

const { u32, i32, ptr } = FFIType;
let helper:
  | {
      t_udmabuf_create(size: number, offset: number, len: number, out: Pointer): number;
      t_heap_alloc(size: number, out: Pointer): number;
      t_dmabuf_sync(fd: number, end: number): number;
    }
  | undefined;

function lib(): NonNullable<typeof helper> {
  if (helper) return helper;
  if (!existsSync(HELPER)) throw new Error(`${HELPER} is missing: build it with \`bash test/vm/setup.sh\``);
  helper = dlopen(HELPER, {
    t_udmabuf_create: { args: [u32, u32, u32, ptr], returns: i32 },
    t_heap_alloc: { args: [u32, ptr], returns: i32 },
    t_dmabuf_sync: { args: [i32, u32], returns: i32 },
  }).symbols as unknown as NonNullable<typeof helper>;
  return helper;
}

/** A dma-buf and the CPU's view of its memory. close() unmaps the view and closes the fds. */
export interface TestDmaBuf {
  /** The dma-buf's fd. */
  readonly fd: number;
  /** udmabuf: the memfd behind it (-1 for a heap buffer). */
  readonly memfd: number;
  /** The memory as the CPU sees it: the memfd's pages (udmabuf) or the dma-buf's own mmap (heap). */
  readonly bytes: Uint8Array;
  /** The dma-buf's inode, as bufinfo names it. */
  readonly ino: number;
  /** Around CPU access to a heap buffer: DMA_BUF_IOCTL_SYNC start (false) / end (true). A no-op for udmabuf's memfd view. */
  sync(end: boolean): void;
  /** Close the dma-buf's fd only (the memory and, for udmabuf, the memfd stay). */
  closeFd(): void;
  close(): void;
}

function out4(): { p: Pointer; v: Uint32Array; free(): void } {
  const n = native();
  const p = n.nvm_host_alloc(16)!;
  return { p, v: new Uint32Array(toArrayBuffer(p, 0, 16)), free: () => n.nvm_host_free(p) };
}

function view(lo: number, hi: number, size: number): { at: Pointer; bytes: Uint8Array } {
  const at = (lo + hi * 2 ** 32) as Pointer;
  return { at, bytes: new Uint8Array(toArrayBuffer(at, 0, size)) };
}

/**
 * A memfd of `size` bytes and a udmabuf dma-buf over [offset, offset + len) of it (all of it by
 * default). `bytes` is the whole memfd.
 */
export function udmabuf(size: number, opts: { offset?: number; len?: number } = {}): TestDmaBuf {
  const o = out4();
  try {
    const rc = lib().t_udmabuf_create(size, opts.offset ?? 0, opts.len ?? size, o.p);
    if (rc < 0) throw new Error(`memfd + UDMABUF_CREATE of ${size} bytes failed: errno ${-rc}`);
    const memfd = o.v[0]!;
    const fd = o.v[1]!;
    const { at, bytes } = view(o.v[2]!, o.v[3]!, size);
    let closed = false;
    let fdOpen = true;
    return {
      fd,
      memfd,
      bytes,
      ino: fstatSync(fd).ino,
      sync() {},
      closeFd() {
        if (fdOpen) closeSync(fd);
        fdOpen = false;
      },
      close() {
        if (closed) return;
        closed = true;
        native().nvm_unmap(at, size);
        this.closeFd();
        closeSync(memfd);
      },
    };
  } finally {
    o.free();
  }
}

/** `size` bytes of the system dma-heap (another exporter than udmabuf), mapped through the dma-buf itself. */
export function heapBuffer(size: number): TestDmaBuf {
  const o = out4();
  try {
    const rc = lib().t_heap_alloc(size, o.p);
    if (rc < 0) throw new Error(`DMA_HEAP_IOCTL_ALLOC of ${size} bytes from /dev/dma_heap/system failed: errno ${-rc}`);
    const fd = o.v[0]!;
    const { at, bytes } = view(o.v[1]!, o.v[2]!, size);
    let closed = false;
    let fdOpen = true;
    return {
      fd,
      memfd: -1,
      bytes,
      ino: fstatSync(fd).ino,
      sync(end: boolean) {
        const r = lib().t_dmabuf_sync(fd, end ? 1 : 0);
        if (r < 0) throw new Error(`DMA_BUF_IOCTL_SYNC failed: errno ${-r}`);
      },
      closeFd() {
        if (fdOpen) closeSync(fd);
        fdOpen = false;
      },
      close() {
        if (closed) return;
        closed = true;
        native().nvm_unmap(at, size);
        this.closeFd();
      },
    };
  } finally {
    o.free();
  }
}

/**
 * The devices attached to the dma-buf with inode `ino`, as the kernel lists them in debugfs
 * (dma_buf_debug_show: a header line per buffer whose 6th column is its inode, then its attached
 * devices). Undefined when the buffer no longer exists.
 */
export function attachedTo(ino: number): string[] | undefined {
  if (!existsSync(BUFINFO)) throw new Error(`${BUFINFO} is missing: the guest must mount debugfs (test/vm/init.sh) on a kernel with CONFIG_DEBUG_FS`);
  const lines = readFileSync(BUFINFO, "utf8").split("\n");
  for (let i = 0; i < lines.length; i++) {
    const cols = lines[i]!.trim().split(/\s+/);
    if (cols.length < 6 || !/^\d+$/.test(cols[0]!) || Number(cols[5]) !== ino) continue;
    const devices: string[] = [];
    for (let j = i + 1; j < lines.length; j++) {
      const l = lines[j]!.trim();
      if (l === "Attached Devices:") continue;
      if (l === "" || l.startsWith("Total ")) break;
      devices.push(l);
    }
    return devices;
  }
  return undefined;
}

/** Whether the test controller is attached to the dma-buf with inode `ino`. */
export function attached(ino: number): boolean {
  return attachedTo(ino)?.includes(BDF) === true;
}

/** dma-buf imports the module holds on the controller right now (sysfs disnvm_dmabufs). */
export function dmabufsOnController(): number {
  return Number(readFileSync(`/sys/bus/pci/devices/${BDF}/disnvm_dmabufs`, "utf8").trim());
}

/** Deterministic bytes for `seed`, cheap to regenerate for a comparison. */
export function fillPattern(bytes: Uint8Array, seed: number): void {
  const v = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < v.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    v[i] = x >>> 0;
  }
}

/** Index of the first byte where `a` and `b` differ, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (Buffer.compare(a, b) === 0) return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}
