/**
 * A namespace as seen through one controller: its geometry from Identify Namespace, the checks
 * every I/O must pass before it reaches the controller (range, count, MDTS, buffer size), and
 * synchronous read/write/flush on a queue pair.
 */
import { InvalidArgumentError } from "./errors.ts";
import type { Controller } from "./controller.ts";
import type { DmaBuffer } from "./dma.ts";
import { buildPrp, prpListPages, PRP_PAGE_SIZE } from "./prp.ts";
import type { QueuePair } from "./queue.ts";
import * as cmd from "./spec/commands.ts";
import { mdtsBytes, type IdentifyNamespace } from "./spec/identify.ts";

/** NLB is a 16-bit 0-based field: one command moves at most 65536 blocks. */
export const MAX_BLOCKS_PER_COMMAND = 65536;

export class Namespace {
  readonly info: IdentifyNamespace;
  /** Bytes per logical block. */
  readonly lbaSize: number;
  /** Namespace Size (NSZE) in blocks; fits a double for any real device (2^53 blocks). */
  readonly blocks: number;
  /** Largest transfer in bytes, or null when MDTS = 0 (no limit). */
  readonly maxTransfer: number | null;

  constructor(
    readonly ctrl: Controller,
    readonly nsid: number,
  ) {
    this.info = ctrl.identifyNamespace(nsid);
    if (!this.info.isActive) throw new InvalidArgumentError(`namespace ${nsid} on ${ctrl.name} is not active (NSZE 0): list active ones with examples/identify.ts`);
    this.lbaSize = this.info.lbaSize;
    this.blocks = Number(this.info.nsze);
    this.maxTransfer = mdtsBytes(ctrl.info.mdts, ctrl.cap.minPageSize);
  }

  /** Throw InvalidArgumentError unless [lba, lba+count) is inside the namespace and one command can move it. */
  checkRange(lba: number, count: number): number {
    if (!Number.isSafeInteger(lba) || lba < 0) throw new InvalidArgumentError(`LBA ${lba} is not a non-negative integer`);
    if (!Number.isInteger(count) || count < 1 || count > MAX_BLOCKS_PER_COMMAND) {
      throw new InvalidArgumentError(`block count ${count}: one command moves 1 to ${MAX_BLOCKS_PER_COMMAND} blocks`);
    }
    if (lba + count > this.blocks) {
      throw new InvalidArgumentError(`LBA ${lba}+${count} past NSZE ${this.blocks} of namespace ${this.nsid}`);
    }
    const bytes = count * this.lbaSize;
    if (this.maxTransfer !== null && bytes > this.maxTransfer) {
      throw new InvalidArgumentError(
        `${count} blocks (${bytes} bytes) exceed MDTS (${this.maxTransfer} bytes, ${this.maxTransfer / this.lbaSize} blocks): split the transfer`,
      );
    }
    return bytes;
  }

  #rw(opcode: number, qp: QueuePair, lba: number, count: number, buf: DmaBuffer, offset: number): void {
    const bytes = this.checkRange(lba, count);
    if (offset < 0 || offset % 4 !== 0) throw new InvalidArgumentError(`buffer offset ${offset} must be a non-negative multiple of 4 (PRP alignment)`);
    if (offset + bytes > buf.size) {
      throw new InvalidArgumentError(`buffer too small: ${bytes} bytes for ${count} blocks at offset ${offset}, buffer holds ${buf.size}`);
    }
    const listPages = prpListPages(offset, bytes);
    const list = listPages > 0 ? this.ctrl.allocBuffer(listPages * PRP_PAGE_SIZE) : undefined;
    try {
      const { prp1, prp2 } = buildPrp(buf, offset, bytes, list);
      qp.execute(cmd.readWrite(opcode, this.nsid, lba, count, prp1, prp2), { detail: `@ LBA ${lba}, ${count} blocks` });
    } catch (e) {
      if (list) this.ctrl.releaseAfter(e, list);
      throw e;
    }
    list?.free();
  }

  /** Read `count` blocks at `lba` into `buf` at byte `offset`, waiting for completion. */
  readSync(qp: QueuePair, lba: number, count: number, buf: DmaBuffer, offset = 0): void {
    this.#rw(cmd.NVM_READ, qp, lba, count, buf, offset);
  }

  /** Write `count` blocks at `lba` from `buf` at byte `offset`, waiting for completion. */
  writeSync(qp: QueuePair, lba: number, count: number, buf: DmaBuffer, offset = 0): void {
    this.#rw(cmd.NVM_WRITE, qp, lba, count, buf, offset);
  }

  flushSync(qp: QueuePair): void {
    qp.execute(cmd.flush(this.nsid));
  }
}
