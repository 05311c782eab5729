/**
 * Write a file to a namespace's blocks, one I/O queue pair, commands no larger than MDTS, then Flush.
 * The last partial block is zero-padded; the whole range is checked before the first command, so a
 * range past the end writes nothing. Overwrites the blocks it writes.
 *
 *   bun run examples/write-blocks.ts --ctrl=05:00.0 --ns=1 --lba=0 --input=disk.bin
 */
import { Namespace } from "../lib/index.ts";
import { openInput, writeRange } from "../cli/transfer.ts";
import { intOption, parse, printTransferSummary, run, UsageError, openController } from "./common.ts";

const usage = `usage: bun run examples/write-blocks.ts --ctrl=CTRL --ns=NSID --lba=N --input=FILE [--count=N] [--json]
  Writes FILE to the namespace starting at LBA (the blocks' data is lost), then sends Flush.
  --ctrl=CTRL    controller: PCI address (05:00.0), /dev/disnvmN, nvme+tcp://HOST:PORT/SUBNQN, unix:PATH or smartio-rpc:<fdid> (served)
  --ns=NSID      namespace
  --lba=N        first block
  --input=FILE   data to write (- for stdin, with --count); the last partial block is padded with zeros
  --count=N      blocks to write (default: FILE's size in blocks, rounded up); a shorter FILE is
                 padded with zeros, a longer one is cut after N blocks
  --json         print the summary as one JSON object on stdout
  -h, --help     this text
`;

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

  const file = openInput(input);
  try {
    if (countArg === undefined && file.size === undefined) throw new UsageError(`${input} is not a regular file: give --count\n${usage}`);
    if (countArg === undefined && file.size === 0) throw new UsageError(`${input} is empty: nothing to write (--count=N writes N blocks of zeros)\n${usage}`);

    using ctrl = openController(args);
    const ns = new Namespace(ctrl, nsid);
    const count = countArg ?? Math.ceil(file.size! / ns.lbaSize);
    const totalBytes = count * ns.lbaSize;
    // One I/O queue pair, commands of at most MDTS, zero padding, then Flush (cli/transfer.ts).
    const r = await writeRange(ctrl, ns, { lba, count, input: file, progress: args.json ? undefined : "write" });
    printTransferSummary(args.json, {
      tool: "write-blocks",
      ctrl: ctrl.name,
      nsid,
      lba,
      blocks: count,
      lbaSize: ns.lbaSize,
      byteFields: { inputBytes: BigInt(r.inputBytes), paddingBytes: BigInt(totalBytes - r.inputBytes) },
      commands: r.commands,
      maxBlocksPerCommand: r.chunkBlocks,
      seconds: r.seconds,
      fileFields: { input },
      afterCommands: " + Flush",
      tail: totalBytes > r.inputBytes ? ` (${totalBytes - r.inputBytes} bytes of zero padding)` : "",
    });
  } finally {
    file.close();
  }
});
