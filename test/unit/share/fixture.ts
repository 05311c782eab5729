/**
 * A shared controller for unit tests: the server (ShareServer over a Controller on the fake NVMe
 * controller of fake-nvme.ts) runs in a Worker, so this thread's synchronous client calls and the
 * server's loop run at once, over a real Unix socket. Client memory: ClientFakeBackend, real
 * memory whose made-up bus addresses are published in a SharedArrayBuffer the fake controller
 * resolves, page by page; a page freed is withdrawn, so a DMA to it is a recorded violation.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "../../../lib/backends/types.ts";
import { native } from "../../../lib/native.ts";
import { FAKE_BAR0_SIZE } from "../fake-backend.ts";

/** Page table entries (bus page, host address) shared with the fake controller. */
export const TABLE_ENTRIES = 16384;
const NVM_DMA_NOLOCK = 2;
const TWO32 = 0x1_0000_0000;

export function newTable(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(TABLE_ENTRIES * 2 * 8));
}

let nextBase = 0x40_0000_0000;

export class ClientFakeBackend implements Backend {
  readonly kind = "sysfs" as const;
  readonly name = "client-fake";
  readonly bar0: Pointer;
  readonly bar0Size = FAKE_BAR0_SIZE;
  readonly live = new Set<DmaMapping>();
  #next: number;
  #abandoned = false;
  closed = false;

  constructor(
    bar0: number,
    readonly table: Float64Array,
  ) {
    this.bar0 = bar0 as Pointer;
    this.#next = nextBase;
    nextBase += 0x1_0000_0000;
  }

  get abandoned(): boolean {
    return this.#abandoned;
  }

  allocDma(size: number, _opts: DmaOptions = {}): DmaMapping {
    const pages = Math.ceil(size / HOST_PAGE_SIZE);
    const vaddr = native().nvm_dma_alloc(pages * HOST_PAGE_SIZE, NVM_DMA_NOLOCK);
    if (vaddr === null) throw new Error("nvm_dma_alloc failed");
    const iova = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = this.#next + i * HOST_PAGE_SIZE;
      iova[2 * i] = a % TWO32;
      iova[2 * i + 1] = Math.floor(a / TWO32);
      this.#publish(a, Number(vaddr) + i * HOST_PAGE_SIZE);
    }
    this.#next += (pages + 1) * HOST_PAGE_SIZE;
    const m: DmaMapping = { vaddr, size: pages * HOST_PAGE_SIZE, iova, contiguous: true };
    this.live.add(m);
    return m;
  }

  #publish(bus: number, host: number): void {
    const t = this.table;
    for (let i = 0; i < TABLE_ENTRIES; i++) {
      if (t[2 * i] === 0) {
        t[2 * i + 1] = host;
        t[2 * i] = bus;
        return;
      }
    }
    throw new Error("client page table full");
  }

  #withdraw(bus: number): void {
    const t = this.table;
    for (let i = 0; i < TABLE_ENTRIES; i++) if (t[2 * i] === bus) t[2 * i] = 0;
  }

  freeDma(m: DmaMapping): void {
    if (!this.live.delete(m)) return;
    for (let i = 0; i < m.iova.length / 2; i++) this.#withdraw(m.iova[2 * i]! + m.iova[2 * i + 1]! * TWO32);
    m.revoke?.();
    native().nvm_dma_free(m.vaddr!, m.size, NVM_DMA_NOLOCK);
  }

  importDmaBuf(): DmaMapping {
    throw new Error("not in this fake");
  }

  setBusMaster(): void {}

  abandonDma(): void {
    this.#abandoned = true;
    this.live.clear();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const m of [...this.live]) this.freeDma(m);
  }

  /** A byte view of a mapping (tests that build rings by hand). */
  static view(m: DmaMapping): Uint8Array {
    return new Uint8Array(toArrayBuffer(m.vaddr!, 0, m.size));
  }
}

export interface ServerOptions {
  readonly socket: string;
  /** Serve over the fake SISCI instead (the fabric device id, the shim built against the fake): clients open smartio-rpc:<fdid>. */
  readonly sisci?: { fdid: number; shim: string };
  readonly allow?: string[];
  readonly uids?: number[];
  readonly maxQueues?: number;
  readonly timeoutMs?: number;
}

export interface ServerStats {
  readonly violations: string[];
  readonly clients: { id: number; pid: number; uid: number | undefined; sqids: number[]; heldBytes: number }[];
  readonly reclaimed: number;
  /** I/O SQs the fake controller has now. */
  readonly sqs: number[];
  /** Admin opcodes the controller fetched, in order, with CDW10's low 16 bits (the QID). */
  readonly admin: [number, number][];
  readonly held: number;
  readonly log: string[];
}

/** The server in a Worker; every call answers once the Worker did it. */
export class ServerThread {
  readonly worker: Worker;
  readonly table = newTable();
  bar0 = 0;
  #seq = 0;
  readonly #waiting = new Map<number, (v: unknown) => void>();

  constructor() {
    this.worker = new Worker(join(import.meta.dir, "server-worker.ts"));
    this.worker.on("message", (m: { seq: number; value: unknown }) => {
      this.#waiting.get(m.seq)?.(m.value);
      this.#waiting.delete(m.seq);
    });
  }

  call<T>(op: string, args: unknown = {}): Promise<T> {
    const seq = ++this.#seq;
    return new Promise<T>((resolve) => {
      this.#waiting.set(seq, resolve as (v: unknown) => void);
      this.worker.postMessage({ seq, op, args });
    });
  }

  async start(opts: ServerOptions): Promise<void> {
    const r = await this.call<{ bar0: number; error?: string }>("start", { ...opts, table: this.table });
    if (r.error) throw new Error(r.error);
    this.bar0 = r.bar0;
  }

  stats(): Promise<ServerStats> {
    return this.call<ServerStats>("stats");
  }

  backend(): ClientFakeBackend {
    return new ClientFakeBackend(this.bar0, this.table);
  }

  async stop(): Promise<void> {
    await this.call("stop");
    await this.worker.terminate();
  }
}
