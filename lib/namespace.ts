/**
 * A namespace as seen through one controller: its geometry from Identify Namespace, the checks
 * every command must pass before it reaches the controller (range, block count, MDTS, buffer),
 * and the NVM commands, synchronous (`readSync`) and async (`read`).
 */
import { InvalidArgumentError, NvmeStatusError } from "./errors.ts";
import type { Controller } from "./controller.ts";
import type { DmaBuffer } from "./dma.ts";
import type { NvmeIoQueue } from "./transports/types.ts";
import * as cmd from "./spec/commands.ts";
import type { IdentifyNamespace } from "./spec/identify.ts";
import { SC_COMPARE_FAILURE, SCT_MEDIA } from "./spec/status.ts";

/** NLB is a 16-bit 0-based field: one command moves at most 65536 blocks. */
export const MAX_BLOCKS_PER_COMMAND = 65536;


export interface IoOptions {
  /** Byte offset into the buffer. Defaults to 0. */
  readonly offset?: number;
  /** Queue to use. Defaults to the controller's default I/O queue. */
  readonly queue?: NvmeIoQueue;
}

export interface WriteOptions extends IoOptions {
  /**
   * Force Unit Access: the write completes only once the data is on non-volatile media, not just
   * in the controller's volatile write cache (Identify Controller VWC). Defaults to false.
   */
  readonly fua?: boolean;
}

/** A range for deallocate(): `count` blocks from `lba`. */
export interface BlockRange {
  readonly lba: number;
  readonly count: number;
}

export class Namespace {
  readonly info: IdentifyNamespace;
  /** Bytes per logical block. */
  readonly lbaSize: number;
  /** Namespace Size (NSZE) in blocks (exact up to 2^53 blocks). */
  readonly blocks: number;
  /** Largest transfer of one command in bytes (MDTS, and at most 65536 blocks). */
  readonly maxTransfer: number;
  /** Largest block count of one data command. */
  readonly maxBlocks: number;

  /**
   * Identify namespace `nsid` for I/O. InvalidArgumentError when it is not active, UnsupportedError
   * when it is formatted with metadata or protection information (not transferred by libnvm yet).
   */
  constructor(
    readonly ctrl: Controller,
    readonly nsid: number,
  ) {
    this.info = ctrl.namespaceFormat(nsid);
    this.lbaSize = this.info.lbaSize;
    this.blocks = Number(this.info.nsze);
    this.maxBlocks = Math.min(MAX_BLOCKS_PER_COMMAND, Math.floor(ctrl.maxTransfer / this.lbaSize));
    this.maxTransfer = this.maxBlocks * this.lbaSize;
  }

  /** Throw InvalidArgumentError unless [lba, lba+count) lies inside the namespace (any length: tools split it). */
  checkSpan(lba: number, count: number): void {
    if (!Number.isSafeInteger(lba) || lba < 0) throw new InvalidArgumentError(`LBA ${lba} is not a non-negative integer`);
    if (!Number.isSafeInteger(count) || count < 1) throw new InvalidArgumentError(`block count ${count} must be a positive integer`);
    if (lba + count > this.blocks) throw new InvalidArgumentError(`LBA ${lba}+${count} past NSZE ${this.blocks} of namespace ${this.nsid}`);
  }

  /** Throw InvalidArgumentError unless [lba, lba+count) is inside the namespace and one command may cover it. */
  checkRange(lba: number, count: number, limit = this.maxBlocks): number {
    if (!Number.isInteger(count) || count < 1 || count > MAX_BLOCKS_PER_COMMAND) {
      throw new InvalidArgumentError(`block count ${count}: one command moves 1 to ${MAX_BLOCKS_PER_COMMAND} blocks`);
    }
    this.checkSpan(lba, count);
    if (count > limit) {
      throw new InvalidArgumentError(
        `${count} blocks (${count * this.lbaSize} bytes) exceed MDTS (${this.maxTransfer} bytes, ${this.maxBlocks} blocks): split the transfer`,
      );
    }
    return count * this.lbaSize;
  }

  #queue(opts: IoOptions): NvmeIoQueue {
    return opts.queue ?? this.ctrl.defaultIoQueue();
  }

  // ---- synchronous ----------------------------------------------------------------------------

  /** Read `count` blocks at `lba` into `buf` (at byte offset `offset`), waiting for completion. */
  readSync(q: NvmeIoQueue, lba: number, count: number, buf: DmaBuffer, offset = 0): void {
    q.rwSync(cmd.NVM_READ, this.nsid, lba, count, buf, offset, this.checkRange(lba, count));
  }

  /** Write `count` blocks at `lba` from `buf`, waiting for completion; `fua`: see WriteOptions. */
  writeSync(q: NvmeIoQueue, lba: number, count: number, buf: DmaBuffer, offset = 0, fua = false): void {
    q.rwSync(cmd.NVM_WRITE, this.nsid, lba, count, buf, offset, this.checkRange(lba, count), fua ? cmd.RW_FUA : 0);
  }

  flushSync(q: NvmeIoQueue): void {
    q.commandSync((sqe, o, cid) => cmd.writeSqe(sqe, o, cmd.NVM_FLUSH, cid, this.nsid, 0, 0, 0, 0, 0));
  }

  // ---- async ----------------------------------------------------------------------------------

  /** Read `count` blocks at `lba` into `buf`. Range, MDTS and buffer are checked before sending. */
  async read(lba: number, count: number, buf: DmaBuffer, opts: IoOptions = {}): Promise<void> {
    await this.#queue(opts).rwAsync(cmd.NVM_READ, this.nsid, lba, count, buf, opts.offset ?? 0, this.checkRange(lba, count));
  }

  /**
   * Write `count` blocks at `lba` from `buf`. Its completion means the controller has the data; with
   * a volatile write cache (ctrl.info.vwc bit 0) it survives power loss only after flush(), or
   * with `fua`.
   */
  async write(lba: number, count: number, buf: DmaBuffer, opts: WriteOptions = {}): Promise<void> {
    await this.#queue(opts).rwAsync(cmd.NVM_WRITE, this.nsid, lba, count, buf, opts.offset ?? 0, this.checkRange(lba, count), opts.fua ? cmd.RW_FUA : 0);
  }

  /**
   * Compare (NVM Command Set 3.2.1): true when the blocks equal `buf`, false when the controller
   * answers Compare Failure; any other status throws.
   */
  async compare(lba: number, count: number, buf: DmaBuffer, opts: IoOptions = {}): Promise<boolean> {
    try {
      await this.#queue(opts).rwAsync(cmd.NVM_COMPARE, this.nsid, lba, count, buf, opts.offset ?? 0, this.checkRange(lba, count));
      return true;
    } catch (e) {
      if (e instanceof NvmeStatusError && e.sct === SCT_MEDIA && e.sc === SC_COMPARE_FAILURE) return false;
      throw e;
    }
  }

  /** Flush (NVM Command Set 3.2.2): volatile write cache contents reach non-volatile media. */
  async flush(opts: IoOptions = {}): Promise<void> {
    await this.#queue(opts).commandAsync((sqe, o, cid) => cmd.writeSqe(sqe, o, cmd.NVM_FLUSH, cid, this.nsid, 0, 0, 0, 0, 0));
  }

  /**
   * Write Zeroes (3.2.8): `count` blocks read back as zeros, without a data transfer. With
   * `deallocate`, the controller may also deallocate them (DEAC). Not bound by MDTS.
   */
  async writeZeroes(lba: number, count: number, opts: IoOptions & { deallocate?: boolean } = {}): Promise<void> {
    this.checkRange(lba, count, MAX_BLOCKS_PER_COMMAND);
    const flags = opts.deallocate ? cmd.WRITE_ZEROES_DEAC : 0;
    await this.#queue(opts).commandAsync((sqe, o, cid) =>
      cmd.writeSqe(sqe, o, cmd.NVM_WRITE_ZEROES, cid, this.nsid, 0, 0, cmd.lo32(lba), cmd.hi32(lba), ((count - 1) & 0xffff) | flags),
    );
  }

  /**
   * Dataset Management with Attribute – Deallocate (3.2.3): the blocks' data is no longer needed
   * (TRIM). Up to 256 ranges; each range is up to 2^32-1 blocks.
   */
  async deallocate(ranges: readonly BlockRange[], opts: IoOptions = {}): Promise<void> {
    if (ranges.length < 1 || ranges.length > cmd.DSM_MAX_RANGES) {
      throw new InvalidArgumentError(`Dataset Management takes 1 to ${cmd.DSM_MAX_RANGES} ranges, got ${ranges.length}`);
    }
    for (const r of ranges) {
      if (!Number.isSafeInteger(r.lba) || r.lba < 0 || !Number.isInteger(r.count) || r.count < 1 || r.count > 0xffffffff) {
        throw new InvalidArgumentError(`deallocate range ${r.lba}+${r.count}: LBA must be a non-negative integer and count 1 to 2^32-1`);
      }
      if (r.lba + r.count > this.blocks) throw new InvalidArgumentError(`LBA ${r.lba}+${r.count} past NSZE ${this.blocks} of namespace ${this.nsid}`);
    }
    // The range list (16 bytes a range): over PCIe in the CID's own list page, over TCP in the capsule.
    const list = new Uint8Array(ranges.length * 16);
    const v = new DataView(list.buffer);
    ranges.forEach((r, i) => {
      v.setUint32(i * 16, 0, true); // Context Attributes
      v.setUint32(i * 16 + 4, r.count >>> 0, true);
      v.setUint32(i * 16 + 8, cmd.lo32(r.lba), true);
      v.setUint32(i * 16 + 12, cmd.hi32(r.lba), true);
    });
    await this.#queue(opts).commandDataAsync(
      (sqe, o, cid) => cmd.writeSqe(sqe, o, cmd.NVM_DATASET_MANAGEMENT, cid, this.nsid, 0, 0, ranges.length - 1, cmd.DSM_ATTR_DEALLOCATE, 0),
      list,
    );
  }
}
