/**
 * Write a file to a namespace's blocks, one I/O queue pair, commands no larger than MDTS, then Flush.
 * The last partial block is zero-padded; the whole range is checked before the first command, so a
 * range past the end writes nothing. Overwrites the blocks it writes.
 *
 *   bun run examples/write-blocks.ts --ctrl=05:00.0 --ns=1 --lba=0 --input=disk.bin
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { Namespace, type Controller, type DmaBuffer } from "../lib/index.ts";
import { intOption, parse, printTransferSummary, run, UsageError, openController, yieldForSignals } from "./common.ts";
import { Progress } from "./progress.ts";

const usage = `usage: bun run examples/write-blocks.ts --ctrl=BDF --ns=NSID --lba=N --input=FILE [--count=N] [--json]
  Writes FILE to the namespace starting at LBA (the blocks' data is lost), then sends Flush.
  --ctrl=BDF     controller's PCI address (05:00.0), or /dev/disnvmN
  --ns=NSID      namespace
  --lba=N        first block
  --input=FILE   data to write (- for stdin, with --count); the last partial block is padded with zeros
  --count=N      blocks to write (default: FILE's size in blocks, rounded up); a shorter FILE is
                 padded with zeros, a longer one is cut after N blocks
  --json         print the summary as one JSON object on stdout
  -h, --help     this text
`;

/** The input file could not be opened or read. */
class InputError extends Error {
  override readonly name = "InputError";
}

/**
 * The device side, in one place: one I/O queue pair (Number of Queues asked for 1), then one
 * command per call, `blocks` blocks from the start of `buf` to `lba`; `flush` sends Flush once
 * every write completed. One command in flight; a pipelined version would keep several chunks
 * outstanding here.
 */
function openWriter(ctrl: Controller, ns: Namespace) {
  ctrl.setNumberOfQueues(1);
  const queue = ctrl.createIoQueue({ entries: 64 });
  return {
    write: (lba: number, blocks: number, buf: DmaBuffer): Promise<void> => ns.write(lba, blocks, buf, { queue }),
    flush: (): Promise<void> => ns.flush({ queue }),
  };
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

await run(async () => {
  const args = parse(usage, { ns: { type: "string" }, lba: { type: "string" }, count: { type: "string" }, input: { type: "string", short: "i" } });
  const nsid = intOption("ns", args.ns, usage);
  const lba = intOption("lba", args.lba, usage);
  const countArg = intOption("count", args.count, usage);
  const input = args.input;
  if (nsid === undefined || lba === undefined || input === undefined || input === "") {
    throw new UsageError(`--ns, --lba and --input are required\n${usage}`);
  }
  if (countArg === 0) throw new UsageError(`--count=0: nothing to write\n${usage}`);

  let fd: number;
  try {
    fd = input === "-" ? 0 : openSync(input, "r");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT" ? "no such file" : err.code === "EACCES" ? "permission denied" : err.message;
    throw new InputError(`cannot open input ${input}: ${why}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new InputError(`input ${input} is a directory`);
    const fileBytes = st.isFile() ? st.size : undefined;
    if (countArg === undefined && fileBytes === undefined) throw new UsageError(`${input} is not a regular file: give --count\n${usage}`);
    if (countArg === undefined && fileBytes === 0) throw new UsageError(`${input} is empty: nothing to write (--count=N writes N blocks of zeros)\n${usage}`);

    using ctrl = openController(args);
    const ns = new Namespace(ctrl, nsid);
    const count = countArg ?? Math.ceil(fileBytes! / ns.lbaSize);
    // The whole range first: a range past the end writes nothing, not the part that fits.
    ns.checkSpan(lba, count);
    // ns.maxBlocks: MDTS, or the controller's maxTransferBytes (2 MiB) when MDTS = 0, and at most 65536.
    const chunkBlocks = Math.min(ns.maxBlocks, count);
    const totalBytes = count * ns.lbaSize;

    const dev = openWriter(ctrl, ns);
    using buf = ctrl.allocBuffer(chunkBlocks * ns.lbaSize);

    const progress = new Progress("write", totalBytes, args.json ? false : undefined);
    let commands = 0;
    let fromFile = 0;
    const t0 = performance.now();
    try {
      for (let done = 0; done < count; ) {
        const n = Math.min(chunkBlocks, count - done);
        const chunk = buf.bytes.subarray(0, n * ns.lbaSize);
        // The file is read straight into DMA memory; past its end the chunk is zeros.
        let got = 0;
        try {
          got = readFull(fd, chunk);
        } catch (e) {
          throw new InputError(`reading ${input} at byte ${fromFile}: ${(e as Error).message}`);
        }
        if (got < chunk.length) chunk.fill(0, got);
        fromFile += got;
        await dev.write(lba + done, n, buf);
        commands++;
        done += n;
        progress.update(done * ns.lbaSize);
        await yieldForSignals();
      }
      await dev.flush();
    } finally {
      progress.done();
    }
    const seconds = (performance.now() - t0) / 1000;

    printTransferSummary(args.json, {
      tool: "write-blocks",
      ctrl: ctrl.name,
      nsid,
      lba,
      blocks: count,
      lbaSize: ns.lbaSize,
      byteFields: { inputBytes: BigInt(fromFile), paddingBytes: BigInt(totalBytes - fromFile) },
      commands,
      maxBlocksPerCommand: chunkBlocks,
      seconds,
      fileFields: { input },
      afterCommands: " + Flush",
      tail: totalBytes > fromFile ? ` (${totalBytes - fromFile} bytes of zero padding)` : "",
    });
  } finally {
    if (fd !== 0) closeSync(fd);
  }
});
