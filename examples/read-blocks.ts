/**
 * Read a range of blocks from a namespace into a file (or stdout), one I/O queue pair, commands no
 * larger than MDTS. The file appears only when every command succeeded: data goes to
 * FILE.partial-<pid>, renamed at the end and deleted on any failure, signals included.
 *
 *   bun run examples/read-blocks.ts --ctrl=05:00.0 --ns=1 --lba=0 --count=2048 --output=disk.bin
 */
import { closeSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { Namespace, type Controller, type DmaBuffer } from "../lib/index.ts";
import { intOption, parse, printTransferSummary, run, UsageError, openController, yieldForSignals } from "./common.ts";
import { Progress } from "./progress.ts";

const usage = `usage: bun run examples/read-blocks.ts --ctrl=BDF --ns=NSID --lba=N --count=N [--output=FILE] [--json]
  Reads COUNT blocks starting at LBA into FILE, or to stdout when it is not a terminal.
  --ctrl=BDF     controller's PCI address (05:00.0), or /dev/disnvmN
  --ns=NSID      namespace
  --lba=N        first block
  --count=N      blocks to read (1 or more; split into commands of at most MDTS)
  --output=FILE  destination; written as FILE.partial-<pid> and renamed when every command succeeded
  --json         print the summary as one JSON object on stdout (needs --output)
  -h, --help     this text
`;

/**
 * The device side, in one place: one I/O queue pair (Number of Queues asked for 1), then one
 * command per call, `blocks` blocks at `lba` into the start of `buf`. One command in flight; a
 * pipelined version would keep several chunks outstanding here.
 */
function openReader(ctrl: Controller, ns: Namespace): (lba: number, blocks: number, buf: DmaBuffer) => Promise<void> {
  ctrl.setNumberOfQueues(1);
  const queue = ctrl.createIoQueue({ entries: 64 });
  return (lba, blocks, buf) => ns.read(lba, blocks, buf, { queue });
}

/** The output could not be created, written or renamed. */
class OutputError extends Error {
  override readonly name = "OutputError";
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

await run(async () => {
  const args = parse(usage, { ns: { type: "string" }, lba: { type: "string" }, count: { type: "string" }, output: { type: "string", short: "o" } });
  const nsid = intOption("ns", args.ns, usage);
  const lba = intOption("lba", args.lba, usage);
  const count = intOption("count", args.count, usage);
  if (nsid === undefined || lba === undefined || count === undefined) throw new UsageError(`--ns, --lba and --count are required\n${usage}`);
  if (count === 0) throw new UsageError(`--count=0: nothing to read\n${usage}`);
  const output = args.output;
  if (output === "") throw new UsageError(`--output needs a file name\n${usage}`);
  if (output === undefined && args.json) throw new UsageError(`--json prints on stdout: give --output for the data\n${usage}`);
  if (output === undefined && process.stdout.isTTY) throw new UsageError(`refusing to write binary data to a terminal: give --output=FILE or redirect stdout\n${usage}`);

  using ctrl = openController(args);
  const ns = new Namespace(ctrl, nsid);
  // The whole range first: nothing is read (and no file created) for a range past the end.
  ns.checkSpan(lba, count);
  // ns.maxBlocks: MDTS, or the controller's maxTransferBytes (2 MiB) when MDTS = 0, and at most 65536.
  const chunkBlocks = Math.min(ns.maxBlocks, count);
  const totalBytes = count * ns.lbaSize;

  const readChunk = openReader(ctrl, ns);
  using buf = ctrl.allocBuffer(chunkBlocks * ns.lbaSize);

  const partial = output === undefined ? undefined : `${output}.partial-${process.pid}`;
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
      throw new OutputError(`cannot create ${partial}: ${(e as Error).message}`);
    }
  }

  const progress = new Progress("read", totalBytes, args.json ? false : undefined);
  let commands = 0;
  const t0 = performance.now();
  try {
    for (let done = 0; done < count; ) {
      const n = Math.min(chunkBlocks, count - done);
      await readChunk(lba + done, n, buf);
      commands++;
      try {
        writeAll(fd, buf.bytes.subarray(0, n * ns.lbaSize));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EPIPE") throw e;
        throw new OutputError(`writing ${partial ?? "stdout"} at byte ${done * ns.lbaSize}: ${(e as Error).message}`);
      }
      done += n;
      progress.update(done * ns.lbaSize);
      await yieldForSignals();
    }
    if (partial !== undefined) {
      closeSync(fd);
      fd = 1;
      renameSync(partial, output!);
      renamed = true;
    }
  } catch (e) {
    progress.done();
    removePartial();
    // A reader that went away (`| head`) is not an error of ours: stop quietly, as on SIGPIPE.
    if ((e as NodeJS.ErrnoException).code === "EPIPE") {
      process.exitCode = 141;
      return;
    }
    throw e;
  } finally {
    process.off("exit", removePartial);
  }
  const seconds = (performance.now() - t0) / 1000;
  progress.done();

  printTransferSummary(args.json, {
    tool: "read-blocks",
    ctrl: ctrl.name,
    nsid,
    lba,
    blocks: count,
    lbaSize: ns.lbaSize,
    commands,
    maxBlocksPerCommand: chunkBlocks,
    seconds,
    fileFields: { output },
    tail: output === undefined ? "" : ` -> ${output}`,
  });
});
