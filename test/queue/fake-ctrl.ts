/**
 * bun:ffi binding of the fake controller thread (fake-ctrl.c, test-only), for TypeScript that
 * drives queues against it: the GPU check (test/gpu/queue-check.ts) and its unit test.
 */
import { dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";
import { checkPtr, native } from "../../lib/native.ts";
import { fakeCtrlLibrary } from "./build.ts";

const { ptr: P, u32, i32, u64, void: VOID } = FFIType;

/** Indices of fc_stats() (fake-ctrl.h). */
export const FC = {
  FETCHED: 0,
  COMPLETED: 1,
  ERRORS: 2,
  DROPPED: 3,
  BAD_DOORBELL: 4,
  DUP_CID: 5,
  BAD_PRP: 6,
  CQ_FULL: 7,
  MAX_INFLIGHT: 8,
  READS: 9,
  WRITES: 10,
  BAD_OPCODE: 11,
  COUNT: 12,
} as const;

let lib:
  | {
      fc_create_simple(lba: number, blocks: number, dmin: number, dmax: number, reorder: number, errPpm: number, dropPpm: number, seed: number, dropNth: number, bar: Pointer): Pointer | null;
      fc_add_window(fc: Pointer, bus: bigint, host: Pointer, bytes: bigint): number;
      fc_add_queue(fc: Pointer, qid: number, sq: Pointer, cq: Pointer, entries: number): number;
      fc_start(fc: Pointer): number;
      fc_stop(fc: Pointer): number;
      fc_destroy(fc: Pointer): void;
      fc_release_dropped(fc: Pointer, status: number): number;
      fc_stats(fc: Pointer, out: Pointer): void;
      fc_disk(fc: Pointer): Pointer;
      fc_set_error_ppm(fc: Pointer, ppm: number): void;
    }
  | undefined;

function load() {
  lib ??= dlopen(fakeCtrlLibrary(), {
    fc_create_simple: { args: [u32, u32, u32, u32, u32, u32, u32, u32, u32, P], returns: P },
    fc_add_window: { args: [P, u64, P, u64], returns: i32 },
    fc_add_queue: { args: [P, u32, P, P, u32], returns: i32 },
    fc_start: { args: [P], returns: i32 },
    fc_stop: { args: [P], returns: i32 },
    fc_destroy: { args: [P], returns: VOID },
    fc_release_dropped: { args: [P, u32], returns: i32 },
    fc_stats: { args: [P, P], returns: VOID },
    fc_disk: { args: [P], returns: P },
    fc_set_error_ppm: { args: [P, u32], returns: VOID },
  }).symbols as unknown as NonNullable<typeof lib>;
  return lib;
}

export interface FakeCtrlOptions {
  readonly lbaBytes?: number;
  readonly blocks: number;
  readonly delayMinUs?: number;
  readonly delayMaxUs?: number;
  readonly reorder?: number;
  readonly errorPpm?: number;
  readonly dropPpm?: number;
  readonly dropNth?: number;
  readonly seed?: number;
}

/** A fake controller thread over memory the caller owns: `bar` (doorbells at 0x1000 + 8 qid, DSTRD 0). */
export class FakeCtrl {
  readonly #fc: Pointer;
  readonly #stats: Pointer;
  readonly #statsView: BigUint64Array;
  readonly lbaBytes: number;
  readonly blocks: number;
  #destroyed = false;

  constructor(bar: Pointer, o: FakeCtrlOptions) {
    const l = load();
    this.lbaBytes = o.lbaBytes ?? 512;
    this.blocks = o.blocks;
    const fc = l.fc_create_simple(this.lbaBytes, o.blocks, o.delayMinUs ?? 0, o.delayMaxUs ?? 0, o.reorder ?? 0, o.errorPpm ?? 0, o.dropPpm ?? 0, o.seed ?? 1, o.dropNth ?? 0, bar);
    if (fc === null) throw new Error("fc_create_simple failed (bad options or no memory)");
    this.#fc = fc;
    this.#stats = checkPtr(native().nvm_host_alloc(8 * FC.COUNT), "nvm_host_alloc");
    this.#statsView = new BigUint64Array(toArrayBuffer(this.#stats, 0, 8 * FC.COUNT));
  }

  window(bus: number | bigint, host: Pointer, bytes: number): void {
    const r = load().fc_add_window(this.#fc, BigInt(bus), host, BigInt(bytes));
    if (r !== 0) throw new Error(`fc_add_window(0x${BigInt(bus).toString(16)}, ${bytes}) failed: ${r}`);
  }

  queue(qid: number, sq: Pointer, cq: Pointer, entries: number): void {
    const r = load().fc_add_queue(this.#fc, qid, sq, cq, entries);
    if (r !== 0) throw new Error(`fc_add_queue(${qid}) failed: ${r}`);
  }

  start(): void {
    const r = load().fc_start(this.#fc);
    if (r !== 0) throw new Error(`fc_start failed: ${r}`);
  }

  setErrorPpm(ppm: number): void {
    load().fc_set_error_ppm(this.#fc, ppm);
  }

  releaseDropped(status: number): void {
    load().fc_release_dropped(this.#fc, status);
  }

  stats(): number[] {
    load().fc_stats(this.#fc, this.#stats);
    return Array.from(this.#statsView, Number);
  }

  /** The RAM disk, as dwords (valid until destroy()). */
  disk(): Uint32Array {
    return new Uint32Array(toArrayBuffer(load().fc_disk(this.#fc), 0, this.blocks * this.lbaBytes));
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    load().fc_destroy(this.#fc);
    native().nvm_host_free(this.#stats);
  }
}
