/**
 * Block transfers between a namespace and a file, split into commands of at most MDTS (and 65536
 * blocks): read into a file (or stdout), write from a file (or stdin), compare with a file. One
 * I/O queue pair, one command in flight, a progress bar on a terminal, signals let through. Used
 * by `libnvm read|write|compare` and by examples/read-blocks.ts and write-blocks.ts.
 *
 * The whole range is checked before the first command: a range past the end moves nothing. A read
 * goes to FILE.partial-<pid>, renamed once every command succeeded and deleted on any failure,
 * signals included, so FILE never holds a partial result.
 */
import { closeSync, fstatSync, openSync, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import type { Controller } from "../lib/controller.ts";
import type { DmaBuffer } from "../lib/dma.ts";
import type { AnyIoQueue } from "../lib/controller.ts";
import type { Namespace } from "../lib/namespace.ts";
import { yieldForSignals } from "./common.ts";
import { Progress } from "./progress.ts";

/** The output could not be created, written or renamed. */
export class OutputError extends Error {
  override readonly name = "OutputError";
}

/** The input file could not be opened or read. */
export class InputError extends Error {
  override readonly name = "InputError";
}

/** How a transfer went, for the summary line or JSON. */
export interface TransferResult {
  readonly commands: number;
  /** Blocks of the largest command. */
  readonly chunkBlocks: number;
  readonly seconds: number;
}

/**
 * The I/O queue of a transfer: one pair (Number of Queues asked for 1, which is allowed only
 * before the first I/O queue exists), 64 entries. One command in flight; a pipelined transfer
 * would keep several chunks outstanding on it.
 */
function transferQueue(ctrl: Controller): AnyIoQueue {
  ctrl.setNumberOfQueues(1);
  return ctrl.createIoQueue({ entries: 64 });
}

/** Write all of `data` to `fd`: a pipe takes partial writes, and a non-blocking one says EAGAIN. */
function writeAll(fd: number, data: Uint8Array): void {
  for (let done = 0; done < data.length; ) {
    try {
      done += writeSync(fd, data, done, data.length - done);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
      Bun.sleepSync(1);
    }
  }
}

/** Read up to `into.length` bytes from `fd`'s current position; fewer only at end of file. */
function readFull(fd: number, into: Uint8Array): number {
  let got = 0;
  while (got < into.length) {
    let r: number;
    try {
      r = readSync(fd, into, got, into.length - got, null);
    } catch (e) {
      // A non-blocking pipe on stdin.
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
      Bun.sleepSync(1);
      continue;
    }
    if (r === 0) break;
    got += r;
  }
  return got;
}

export interface ReadRangeOptions {
  readonly lba: number;
  readonly count: number;
  /** Destination file; undefined: stdout. */
  readonly output: string | undefined;
  /** Bytes to write out, when fewer than count × LBA size (nvme-cli's --data-size). Defaults to all. */
  readonly bytes?: number;
  /** Progress bar label; no bar when undefined. */
  readonly progress: string | undefined;
}

/** Read `count` blocks at `lba` into a file or stdout. `brokenPipe`: the reader of stdout went away. */
export async function readRange(ctrl: Controller, ns: Namespace, o: ReadRangeOptions): Promise<TransferResult & { brokenPipe: boolean }> {
  ns.checkSpan(o.lba, o.count);
  // ns.maxBlocks: MDTS, or the controller's maxTransferBytes (2 MiB) when MDTS = 0, and at most 65536.
  const chunkBlocks = Math.min(ns.maxBlocks, o.count);
  const wanted = Math.min(o.bytes ?? o.count * ns.lbaSize, o.count * ns.lbaSize);
  const queue = transferQueue(ctrl);
  using buf = ctrl.allocBuffer(chunkBlocks * ns.lbaSize);

  const partial = o.output === undefined ? undefined : `${o.output}.partial-${process.pid}`;
  let fd = 1;
  let renamed = false;
  // Also on SIGINT/SIGTERM/SIGHUP: the controller's handler exits through process.exit().
  const removePartial = () => {
    if (partial === undefined || renamed) return;
    if (fd !== 1) {
      try {
        closeSync(fd);
      } catch {
        // Already closed.
      }
      fd = 1;
    }
    try {
      unlinkSync(partial);
    } catch {
      // Never created, or already gone.
    }
  };
  if (partial !== undefined) {
    process.on("exit", removePartial);
    try {
      fd = openSync(partial, "w", 0o644);
    } catch (e) {
      process.off("exit", removePartial);
      throw new OutputError(`cannot create ${partial}: ${(e as Error).message}`);
    }
  }

  const progress = new Progress(o.progress ?? "", wanted, o.progress === undefined ? false : undefined);
  let commands = 0;
  const t0 = performance.now();
  try {
    for (let done = 0; done < o.count; ) {
      const n = Math.min(chunkBlocks, o.count - done);
      await ns.read(o.lba + done, n, buf, { queue });
      commands++;
      const from = done * ns.lbaSize;
      const upto = Math.min(from + n * ns.lbaSize, wanted);
      try {
        if (upto > from) writeAll(fd, buf.bytes.subarray(0, upto - from));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EPIPE") throw e;
        throw new OutputError(`writing ${partial ?? "stdout"} at byte ${from}: ${(e as Error).message}`);
      }
      done += n;
      progress.update(Math.min(done * ns.lbaSize, wanted));
      await yieldForSignals();
    }
    if (partial !== undefined) {
      closeSync(fd);
      fd = 1;
      try {
        renameSync(partial, o.output!);
      } catch (e) {
        throw new OutputError(`cannot rename ${partial} to ${o.output}: ${(e as Error).message}`);
      }
      renamed = true;
    }
  } catch (e) {
    progress.done();
    removePartial();
    // A reader that went away (`| head`) is not an error of ours: stop quietly, as on SIGPIPE.
    if ((e as NodeJS.ErrnoException).code === "EPIPE") return { commands, chunkBlocks, seconds: (performance.now() - t0) / 1000, brokenPipe: true };
    throw e;
  } finally {
    process.off("exit", removePartial);
  }
  progress.done();
  return { commands, chunkBlocks, seconds: (performance.now() - t0) / 1000, brokenPipe: false };
}

/** An input opened for writeRange/compareRange: its descriptor and, for a regular file, its size. */
export interface Input {
  readonly fd: number;
  readonly name: string;
  /** Bytes in a regular file; undefined for a pipe or a terminal. */
  readonly size: number | undefined;
  /** Take at most this many bytes (nvme-cli's --data-size); the rest of the range is zeros. Defaults to no limit. */
  readonly limit?: number;
  close(): void;
}

/** Fill `into` from the input, `taken` bytes of which were read before; fewer bytes at its end or limit. */
function readInput(input: Input, into: Uint8Array, taken: number): number {
  const room = input.limit === undefined ? into.length : Math.max(0, Math.min(into.length, input.limit - taken));
  return room === 0 ? 0 : readFull(input.fd, into.subarray(0, room));
}

/** Open `name` ("-": stdin) for reading; InputError naming the file when it cannot be. */
export function openInput(name: string): Input {
  let fd: number;
  try {
    fd = name === "-" ? 0 : openSync(name, "r");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT" ? "no such file" : err.code === "EACCES" ? "permission denied" : err.message;
    throw new InputError(`cannot open input ${name}: ${why}`);
  }
  const st = fstatSync(fd);
  const close = () => {
    if (fd !== 0) closeSync(fd);
  };
  if (st.isDirectory()) {
    close();
    throw new InputError(`input ${name} is a directory`);
  }
  return { fd, name, size: st.isFile() ? st.size : undefined, close };
}

export interface WriteRangeOptions {
  readonly lba: number;
  readonly count: number;
  readonly input: Input;
  /** Force Unit Access on every write. Defaults to false. */
  readonly fua?: boolean;
  /** Progress bar label; no bar when undefined. */
  readonly progress: string | undefined;
}

/** Fill `chunk` from the input at byte `at`, zeros past its end; the bytes the input gave. */
function fillFromInput(input: Input, chunk: Uint8Array, at: number): number {
  let got: number;
  try {
    got = readInput(input, chunk, at);
  } catch (e) {
    throw new InputError(`reading ${input.name} at byte ${at}: ${(e as Error).message}`);
  }
  if (got < chunk.length) chunk.fill(0, got);
  return got;
}

/**
 * Write `count` blocks at `lba` from the input, read straight into DMA memory; past its end the
 * blocks are zeros. Flush once every write completed. Returns the bytes taken from the input.
 */
export async function writeRange(ctrl: Controller, ns: Namespace, o: WriteRangeOptions): Promise<TransferResult & { inputBytes: number }> {
  ns.checkSpan(o.lba, o.count);
  const chunkBlocks = Math.min(ns.maxBlocks, o.count);
  const queue = transferQueue(ctrl);
  using buf = ctrl.allocBuffer(chunkBlocks * ns.lbaSize);
  const progress = new Progress(o.progress ?? "", o.count * ns.lbaSize, o.progress === undefined ? false : undefined);
  let commands = 0;
  let fromFile = 0;
  const t0 = performance.now();
  try {
    for (let done = 0; done < o.count; ) {
      const n = Math.min(chunkBlocks, o.count - done);
      const chunk = buf.bytes.subarray(0, n * ns.lbaSize);
      fromFile += fillFromInput(o.input, chunk, fromFile);
      await ns.write(o.lba + done, n, buf, { queue, fua: o.fua ?? false });
      commands++;
      done += n;
      progress.update(done * ns.lbaSize);
      await yieldForSignals();
    }
    await ns.flush({ queue });
  } finally {
    progress.done();
  }
  return { commands, chunkBlocks, seconds: (performance.now() - t0) / 1000, inputBytes: fromFile };
}

export interface CompareRangeOptions {
  readonly lba: number;
  readonly count: number;
  readonly input: Input;
  /** Progress bar label; no bar when undefined. */
  readonly progress: string | undefined;
}

/**
 * Compare (NVM Command Set 3.2.1) `count` blocks at `lba` with the input, zero-padded past its end:
 * the controller compares, no data comes back. `mismatch`: the first chunk the controller
 * answered Compare Failure for, as [first LBA, blocks]; the rest is not compared.
 */
export async function compareRange(ctrl: Controller, ns: Namespace, o: CompareRangeOptions): Promise<TransferResult & { mismatch: [number, number] | undefined }> {
  ns.checkSpan(o.lba, o.count);
  const chunkBlocks = Math.min(ns.maxBlocks, o.count);
  const queue = transferQueue(ctrl);
  using buf: DmaBuffer = ctrl.allocBuffer(chunkBlocks * ns.lbaSize);
  const progress = new Progress(o.progress ?? "", o.count * ns.lbaSize, o.progress === undefined ? false : undefined);
  let commands = 0;
  let fromFile = 0;
  const t0 = performance.now();
  try {
    for (let done = 0; done < o.count; ) {
      const n = Math.min(chunkBlocks, o.count - done);
      const chunk = buf.bytes.subarray(0, n * ns.lbaSize);
      fromFile += fillFromInput(o.input, chunk, fromFile);
      commands++;
      if (!(await ns.compare(o.lba + done, n, buf, { queue }))) {
        return { commands, chunkBlocks, seconds: (performance.now() - t0) / 1000, mismatch: [o.lba + done, n] };
      }
      done += n;
      progress.update(done * ns.lbaSize);
      await yieldForSignals();
    }
  } finally {
    progress.done();
  }
  return { commands, chunkBlocks, seconds: (performance.now() - t0) / 1000, mismatch: undefined };
}
