/**
 * Read a range of blocks from a namespace into a file (or stdout), one I/O queue pair, commands no
 * larger than MDTS. The file appears only when every command succeeded: data goes to
 * FILE.partial-<pid>, renamed at the end and deleted on any failure, signals included.
 *
 *   bun run examples/read-blocks.ts --ctrl=05:00.0 --ns=1 --lba=0 --count=2048 --output=disk.bin
 */
import { Namespace } from "../lib/index.ts";
import { readRange } from "../cli/transfer.ts";
import { intOption, parse, printTransferSummary, run, UsageError, openController } from "./common.ts";

const usage = `usage: bun run examples/read-blocks.ts --ctrl=CTRL --ns=NSID --lba=N --count=N [--output=FILE] [--json]
  Reads COUNT blocks starting at LBA into FILE, or to stdout when it is not a terminal.
  --ctrl=CTRL    controller: PCI address (05:00.0), /dev/disnvmN, nvme+tcp://HOST:PORT/SUBNQN, unix:PATH or smartio-rpc:<fdid> (served)
  --ns=NSID      namespace
  --lba=N        first block
  --count=N      blocks to read (1 or more; split into commands of at most MDTS)
  --output=FILE  destination; written as FILE.partial-<pid> and renamed when every command succeeded
  --json         print the summary as one JSON object on stdout (needs --output)
  -h, --help     this text
`;

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
  // One I/O queue pair, commands of at most MDTS, FILE.partial-<pid> renamed at the end (cli/transfer.ts).
  const r = await readRange(ctrl, ns, { lba, count, output, progress: args.json ? undefined : "read" });
  if (r.brokenPipe) {
    // A reader that went away (`| head`) is not an error of ours: stop quietly, as on SIGPIPE.
    process.exitCode = 141;
    return;
  }
  printTransferSummary(args.json, {
    tool: "read-blocks",
    ctrl: ctrl.name,
    nsid,
    lba,
    blocks: count,
    lbaSize: ns.lbaSize,
    commands: r.commands,
    maxBlocksPerCommand: r.chunkBlocks,
    seconds: r.seconds,
    fileFields: { output },
    tail: output === undefined ? "" : ` -> ${output}`,
  });
});
