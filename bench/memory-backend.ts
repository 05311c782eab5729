/**
 * A Backend over plain memory for the benchmarks: "BAR0" is a page of locked memory whose
 * doorbells a completer thread (c/src/bench.c) watches, DMA memory is real locked memory
 * (nvm_dma_alloc) and its "bus address" is its virtual address, so every buffer is contiguous.
 * Nothing here touches a device.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { UnsupportedError } from "../lib/errors.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "../lib/backends/types.ts";
import type { IoQueueContext, PollingOptions } from "../lib/io.ts";
import { native } from "../lib/native.ts";

const TWO32 = 0x1_0000_0000;
export const MEMORY_BAR0_SIZE = 16 * 1024;

export class MemoryBackend implements Backend {
  readonly kind = "sysfs" as const;
  readonly name = "memory";
  readonly bar0: Pointer;
  readonly bar0Size = MEMORY_BAR0_SIZE;
  readonly regs: Uint32Array;
  readonly #live = new Set<DmaMapping & { readonly vaddr: Pointer }>();

  constructor() {
    const p = native().nvm_dma_alloc(MEMORY_BAR0_SIZE, 0);
    if (p === null) throw new Error(`nvm_dma_alloc failed (errno ${native().nvm_last_error()}): raise the memlock limit (ulimit -l)`);
    this.bar0 = p;
    this.regs = new Uint32Array(toArrayBuffer(p, 0, MEMORY_BAR0_SIZE));
  }

  allocDma(size: number, _opts: DmaOptions = {}): DmaMapping {
    const pages = Math.ceil(size / HOST_PAGE_SIZE);
    const vaddr = native().nvm_dma_alloc(pages * HOST_PAGE_SIZE, 0);
    if (vaddr === null) throw new Error(`nvm_dma_alloc(${size}) failed: errno ${native().nvm_last_error()}`);
    const iova = new Uint32Array(2 * pages);
    const base = Number(vaddr);
    for (let i = 0; i < pages; i++) {
      const a = base + i * HOST_PAGE_SIZE;
      iova[2 * i] = a % TWO32;
      iova[2 * i + 1] = Math.floor(a / TWO32);
    }
    const m = { vaddr, size: pages * HOST_PAGE_SIZE, iova, contiguous: true };
    this.#live.add(m);
    return m;
  }

  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw new UnsupportedError("the benchmarks' memory backend has no device to import a dma-buf for");
  }

  freeDma(mapping: DmaMapping): void {
    const m = mapping as DmaMapping & { readonly vaddr: Pointer };
    if (!this.#live.delete(m)) return;
    m.revoke?.();
    native().nvm_dma_free(m.vaddr, m.size, 0);
  }

  setBusMaster(_enabled: boolean): void {}

  abandonDma(): void {
    this.#live.clear();
  }

  close(): void {
    for (const m of [...this.#live]) this.freeDma(m);
    native().nvm_dma_free(this.bar0, MEMORY_BAR0_SIZE, 0);
  }
}

/**
 * What an owner lends an I/O queue over `backend` when every command is answered (a completer
 * thread, or the caller writing the CQEs): no deadline passes, so the recovery hooks, which a
 * Controller would implement, throw instead, naming `who`.
 */
export function answeredQueueContext(
  backend: Backend,
  opts: { readonly who: string; readonly timeoutMs: number; readonly lbaSize: number; readonly polling?: PollingOptions },
): IoQueueContext {
  const noRecovery = () => {
    throw new Error(`${opts.who}: a command was not answered within ${opts.timeoutMs} ms (no recovery here: is the completer running?)`);
  };
  return {
    backend,
    dstrd: 0,
    timeoutMs: opts.timeoutMs,
    maxTransfer: 128 * 1024,
    sgls: 0,
    lbaSize: () => opts.lbaSize,
    onExpired: noRecovery,
    onStuck: noRecovery,
    onFatal: noRecovery,
    ...(opts.polling ? { polling: opts.polling } : {}),
  };
}
