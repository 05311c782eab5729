/**
 * DMA buffers: C-owned memory the controller reaches by bus address, seen from JS through
 * zero-copy typed-array views. free() detaches the views before the memory goes away, so a
 * stale view reads as empty instead of touching unmapped memory (which would kill the process).
 * region() wraps part of a buffer without copying; it lives and dies with its parent.
 *
 * The controller never reaches memory the application gave up: free() of a buffer that a posted
 * command may still read or write (one not yet completed, aborted, or ended by a disable) takes
 * the views away at once but keeps the memory until no DmaUser reports it in use any more.
 *
 * A buffer imported from a dma-buf (DmaBuffer.importDmaBuf) is the exporter's memory, a GPU's for
 * instance: it has bus addresses and no CPU view (bytes, u32 and pointer throw NoCpuViewError).
 * Its exporter may revoke it; the backend then invalidates it and every use throws the reason.
 */
import { toArrayBuffer } from "bun:ffi";
import type { Pointer } from "bun:ffi";
import { ClosedError, InvalidArgumentError, NoCpuViewError, UnsupportedError } from "./errors.ts";
import { HOST_PAGE_SIZE, type DmaAllocator, type DmaBufImport, type DmaMapping, type DmaOptions } from "./backends/types.ts";

const TWO32 = 0x1_0000_0000;

/** The memory a region shares with its parent buffer. */
interface Shared {
  /** What commands may use: undefined once freed, or invalidated (`error` says why). */
  mapping: DmaMapping | undefined;
  /** What free() gives back: undefined once freed. */
  owned: DmaMapping | undefined;
  /** The CPU's view; undefined for memory without one (an imported dma-buf). */
  readonly buffer: ArrayBuffer | undefined;
  /** Why the memory may no longer be used although it was not freed (its exporter revoked it). */
  error?: Error;
  /** What onRelease() asked to run before the memory goes; created on first use. */
  releaseHooks?: Set<() => void>;
}

/** Something that may make the controller reach DMA memory: an I/O queue with commands outstanding. */
export interface DmaUser {
  /** True while a command may still read or write the memory `key` (a DmaBuffer's memoryKey) names. */
  mayAccess(key: object): boolean;
}

interface BackendDma {
  readonly users: Set<DmaUser>;
  /** Memory freed by the application while still in use: released once no user may reach it. */
  readonly deferred: Map<object, DmaMapping>;
}

const perBackend = new WeakMap<DmaAllocator, BackendDma>();

/**
 * Mappings whose release waits for commands to end, over every backend: the completion path
 * tests this one number before it looks for anything to release.
 */
export const deferredFrees = { count: 0 };

function dmaOf(backend: DmaAllocator): BackendDma {
  let d = perBackend.get(backend);
  if (!d) {
    d = { users: new Set(), deferred: new Map() };
    perBackend.set(backend, d);
  }
  return d;
}

/** Register `user` (an I/O queue): free() asks it before releasing memory of `backend`. */
export function addDmaUser(backend: DmaAllocator, user: DmaUser): void {
  dmaOf(backend).users.add(user);
}

/** `user` will never reach memory again (its queue was deleted, or the controller disabled). */
export function removeDmaUser(backend: DmaAllocator, user: DmaUser): void {
  const d = perBackend.get(backend);
  if (!d) return;
  d.users.delete(user);
  releaseDeferred(backend);
}

function inUse(d: BackendDma, key: object): boolean {
  for (const u of d.users) if (u.mayAccess(key)) return true;
  return false;
}

/** Release the memory freed while in use that no command can reach any more; returns how many. */
export function releaseDeferred(backend: DmaAllocator): number {
  const d = perBackend.get(backend);
  if (!d || d.deferred.size === 0) return 0;
  let n = 0;
  for (const [key, m] of [...d.deferred]) {
    if (inUse(d, key)) continue;
    d.deferred.delete(key);
    deferredFrees.count--;
    n++;
    backend.freeDma(m);
  }
  return n;
}

/** Mappings of `backend` freed by the application and still waiting for commands to end. */
export function deferredCount(backend: DmaAllocator): number {
  return perBackend.get(backend)?.deferred.size ?? 0;
}

/**
 * Passed by region() and importDmaBuf() only: makes the constructor wrap shared memory, or a
 * mapping made already, instead of allocating.
 */
type Source = { readonly shared: Shared; readonly base: number } | { readonly mapping: DmaMapping };

export class DmaBuffer {
  /** Usable bytes: whole 4 KiB pages for a buffer, exactly the length asked for a region. */
  readonly size: number;
  /** Byte offset of this buffer inside its mapping (0 except for regions). */
  readonly base: number;
  readonly #backend: DmaAllocator;
  readonly #shared: Shared;
  readonly #owner: boolean;
  readonly #bytes: Uint8Array | undefined;
  readonly #u32: Uint32Array | undefined;

  constructor(backend: DmaAllocator, size: number, opts: DmaOptions = {}, from?: Source) {
    if (!Number.isInteger(size) || size <= 0) throw new InvalidArgumentError(`DMA buffer size must be a positive integer, got ${size}`);
    this.#backend = backend;
    if (from && "shared" in from) {
      this.#shared = from.shared;
      this.#owner = false;
      this.base = from.base;
      this.size = size;
    } else {
      const mapping = from ? from.mapping : backend.allocDma(size, opts);
      const buffer = mapping.vaddr === null ? undefined : toArrayBuffer(mapping.vaddr, 0, mapping.size);
      const shared: Shared = { mapping, owned: mapping, buffer };
      // The backend may unmap this memory itself (close()); detach the views first.
      mapping.revoke = () => detach(shared);
      mapping.invalidate = (err) => {
        shared.error = err;
        shared.mapping = undefined;
      };
      this.#shared = shared;
      this.#owner = true;
      this.base = 0;
      this.size = mapping.size;
    }
    const buffer = this.#shared.buffer;
    this.#bytes = buffer && new Uint8Array(buffer, this.base, this.size);
    this.#u32 = buffer && new Uint32Array(buffer, this.base, Math.floor(this.size / 4));
  }

  /**
   * Import [offset, offset + size) of the dma-buf `fd` through `backend` (Backend.importDmaBuf): a
   * buffer of device memory with bus addresses and no CPU view. Controller.mapDmaBuf() checks the
   * arguments first.
   */
  static importDmaBuf(backend: DmaAllocator, fd: number, offset: number, size?: number): DmaBuffer {
    const mapping = backend.importDmaBuf(fd, offset, size);
    return new DmaBuffer(backend, mapping.size, {}, { mapping });
  }

  get freed(): boolean {
    return this.#shared.owned === undefined;
  }

  /** Where the memory came from when it was imported from a dma-buf (undefined otherwise). */
  get dmaBuf(): DmaBufImport | undefined {
    return this.#shared.owned?.dmaBuf;
  }

  /**
   * Why commands may no longer use this memory although it was not freed: set when the exporter
   * of an imported dma-buf revoked it (a DmaBufRevokedError); undefined otherwise.
   */
  get revokedError(): Error | undefined {
    return this.#shared.error;
  }

  #live(): DmaMapping {
    const m = this.#shared.mapping;
    if (!m) throw this.#shared.error ?? new ClosedError("this DMA buffer was freed (or its controller closed); allocate a new one");
    return m;
  }

  /** What the CPU view getters throw for memory without one. */
  #noCpuView(what: string): NoCpuViewError {
    const d = this.dmaBuf;
    const from = d ? `imported from dma-buf fd ${d.fd} (exporter ${d.exporter})` : "without CPU memory";
    return new NoCpuViewError(
      `${what}: this buffer is device memory ${from}, with no CPU view in this process. Copy it through a host buffer ` +
        `(ns.write() it to the drive and ns.read() the blocks into an allocBuffer(), or the other way round), or use the exporter's own API (mmap of its memfd or dma-buf, cuMemcpy)`,
    );
  }

  /** True when the controller behind `backend` can reach this memory. */
  belongsTo(backend: DmaAllocator): boolean {
    return this.#backend === backend;
  }

  /** Host address of the first byte, for native calls. NoCpuViewError for an imported dma-buf. */
  get pointer(): Pointer {
    const vaddr = this.#live().vaddr;
    if (vaddr === null) throw this.#noCpuView("pointer");
    return (Number(vaddr) + this.base) as Pointer;
  }

  /** Byte view over the buffer (no copy). NoCpuViewError for an imported dma-buf. */
  get bytes(): Uint8Array {
    this.#live();
    if (this.#bytes === undefined) throw this.#noCpuView("bytes");
    return this.#bytes;
  }

  /** Dword view over the buffer (no copy); SQ/CQ rings and PRP lists are written through it. */
  get u32(): Uint32Array {
    this.#live();
    if (this.#u32 === undefined) throw this.#noCpuView("u32");
    return this.#u32;
  }

  /** The mapping's per-4 KiB-page bus addresses as (lo, hi) pairs (of the whole mapping for a region). */
  get iova(): Uint32Array {
    // #live() only when the mapping is gone (to throw): the JIT does not inline that private
    // method call, and IoQueue.rw() reads this once a command (bench/README.md, "inlining").
    return (this.#shared.mapping ?? this.#live()).iova;
  }

  get contiguous(): boolean {
    return this.#live().contiguous;
  }

  /** Bus address of the byte at `offset`. */
  busAddress(offset = 0): number {
    const m = this.#live();
    if (offset < 0 || offset >= this.size) throw new InvalidArgumentError(`offset ${offset} outside DMA buffer of ${this.size} bytes`);
    if (m.iova.length === 0) {
      throw new UnsupportedError("this buffer is host memory of an NVMe/TCP controller: it has no bus address (its data travels in the TCP stream)");
    }
    const at = this.base + offset;
    const page = Math.floor(at / HOST_PAGE_SIZE);
    return m.iova[2 * page]! + m.iova[2 * page + 1]! * TWO32 + (at % HOST_PAGE_SIZE);
  }

  /**
   * A view of [offset, offset+length) of this buffer that commands use like a buffer of its
   * own, without copying. Freeing the parent invalidates it; freeing the region does nothing.
   * `offset` must be a multiple of 4 (data pointers are dword aligned).
   */
  region(offset: number, length: number): DmaBuffer {
    this.#live();
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length <= 0 || offset + length > this.size) {
      throw new InvalidArgumentError(`region ${offset}+${length} does not fit a DMA buffer of ${this.size} bytes`);
    }
    if (offset % 4 !== 0) throw new InvalidArgumentError(`region offset ${offset} must be a multiple of 4 (dword alignment)`);
    return new DmaBuffer(this.#backend, length, {}, { shared: this.#shared, base: this.base + offset });
  }

  /**
   * Identity of the memory behind this buffer, shared by its regions: what DmaUser.mayAccess() is
   * asked about.
   */
  get memoryKey(): object {
    return this.#shared;
  }

  /**
   * Run `fn` once, just before the memory behind this buffer (and its regions) is given up: on
   * free() of the owning buffer, or when the backend takes its mappings away (close()); in both
   * cases while the pages are still mapped. For layers above that lent the pages to someone else
   * and must take them back first (a CUDA host registration). Returns a function that cancels it.
   * `fn` must not throw: the memory goes either way.
   */
  onRelease(fn: () => void): () => void {
    this.#live();
    const hooks = (this.#shared.releaseHooks ??= new Set());
    hooks.add(fn);
    return () => void hooks.delete(fn);
  }

  /**
   * Release the memory. Views from `bytes`/`u32`, and regions, become empty at once. While a
   * posted command may still reach the memory, it goes back only once that command completed, was
   * aborted, or the controller was disabled. Idempotent.
   */
  free(): void {
    if (!this.#owner) return;
    const shared = this.#shared;
    const m = detach(shared);
    if (!m) return;
    const d = perBackend.get(this.#backend);
    if (d && inUse(d, shared)) {
      d.deferred.set(shared, m);
      deferredFrees.count++;
    } else this.#backend.freeDma(m);
  }

  [Symbol.dispose](): void {
    this.free();
  }
}

function detach(shared: Shared): DmaMapping | undefined {
  const m = shared.owned;
  if (!m) return undefined;
  shared.owned = undefined;
  shared.mapping = undefined;
  m.revoke = undefined;
  m.invalidate = undefined;
  const hooks = shared.releaseHooks;
  if (hooks) {
    shared.releaseHooks = undefined;
    for (const fn of hooks) fn();
  }
  // Every view over the external memory (regions' too) becomes empty before it is unmapped.
  shared.buffer?.transfer(0);
  return m;
}
