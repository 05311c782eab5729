/**
 * read, write, compare, write-zeroes, dsm, flush: the NVM command set's I/O commands on one
 * namespace, with nvme-cli's option names. --block-count is 0's based, as nvme-cli's (it is the
 * command's NLB field); ranges longer than one command allows are split.
 */
import { Namespace, MAX_BLOCKS_PER_COMMAND } from "../../lib/namespace.ts";
import { DEVICE_OPTIONS, MismatchError, NSID_OPTION, OUTPUT_OPTIONS, type Command, type Context, type Options } from "../cli.ts";
import { printTransferSummary, UsageError, yieldForSignals } from "../common.ts";
import { parseSize } from "../common.ts";
import { printJson } from "../json.ts";
import { compareRange, openInput, readRange, writeRange, type Input } from "../transfer.ts";
import { requireNsid } from "./identify.ts";

const RANGE_OPTIONS: Options = {
  ...NSID_OPTION("namespace (required)"),
  "start-block": { type: "string", short: "s", value: "LBA", help: "first block (default 0)" },
  "block-count": { type: "string", short: "c", value: "NUM", help: "blocks, 0's based as in nvme-cli: 0 is one block; any length, split into commands" },
};

const DATA_SIZE: Options = {
  "data-size": { type: "string", short: "z", value: "SIZE", help: "bytes (4096, 4k, 1M): the length when --block-count is not given" },
};

interface RangeArgs {
  readonly lba: number;
  /** --block-count, 0's based. */
  readonly nlb: number | undefined;
  /** --data-size in bytes. */
  readonly bytes: number | undefined;
}

/** -s, -c and -z, checked before the controller is opened. */
function rangeArgs(ctx: Context): RangeArgs {
  const lba = ctx.int("start-block") ?? 0;
  const nlb = ctx.int("block-count");
  const bytes = parseSize("data-size", ctx.values["data-size"]);
  if (bytes === 0) throw new UsageError("--data-size=0: nothing to transfer");
  return { lba, nlb, bytes };
}

/** The range in blocks of `ns`: --block-count + 1, or --data-size (or the file's size) rounded up to blocks. */
function transferRange(a: RangeArgs, ns: Namespace, fallbackBytes?: number): { lba: number; count: number; bytes: number | undefined } {
  let count: number;
  if (a.nlb !== undefined) {
    count = a.nlb + 1;
    if (a.bytes !== undefined && a.bytes > count * ns.lbaSize) throw new UsageError(`--data-size=${a.bytes} is more than --block-count=${a.nlb} (${count} blocks of ${ns.lbaSize} bytes)`);
  } else if (a.bytes !== undefined) count = Math.ceil(a.bytes / ns.lbaSize);
  else if (fallbackBytes !== undefined && fallbackBytes > 0) count = Math.ceil(fallbackBytes / ns.lbaSize);
  else throw new UsageError("give --block-count (0's based) or --data-size");
  return { lba: a.lba, count, bytes: a.bytes };
}

/** The data file of write and compare: --data, or stdin. */
function input(ctx: Context, what: string): Input {
  const name = typeof ctx.values.data === "string" ? ctx.values.data : "-";
  if (name === "-" && process.stdin.isTTY) throw new UsageError(`give the ${what} with --data=FILE or on stdin`);
  return openInput(name);
}

const FUA: Options = { "force-unit-access": { type: "boolean", short: "f", help: "Force Unit Access: from or to non-volatile media, past any volatile cache" } };

export const read: Command = {
  name: "read",
  summary: "Read blocks into a file or stdout",
  description:
    "Reads --block-count + 1 blocks (or --data-size bytes) from --start-block into --data, or to stdout when it is not\n" +
    "a terminal, in commands of at most MDTS. The file appears only when every command succeeded. A summary\n" +
    "line goes to stderr (-o json: a JSON object on stdout, with --data).",
  device: true,
  options: { ...RANGE_OPTIONS, ...DATA_SIZE, data: { type: "string", short: "d", value: "FILE", help: "where the data goes (default stdout)", complete: "file" }, ...FUA, ...OUTPUT_OPTIONS, ...DEVICE_OPTIONS },
  async run(ctx) {
    const nsid = requireNsid(ctx);
    const output = typeof ctx.values.data === "string" ? ctx.values.data : undefined;
    if (output === "") throw new UsageError("--data needs a file name");
    if (output === undefined && ctx.output === "json") throw new UsageError("JSON goes to stdout: give --data=FILE for the data");
    if (output === undefined && process.stdout.isTTY) throw new UsageError("refusing to write binary data to a terminal: give --data=FILE or redirect stdout");
    if (ctx.values["force-unit-access"]) throw new UsageError("--force-unit-access is for write; reads here always come from the controller");
    const range = rangeArgs(ctx);
    if (range.nlb === undefined && range.bytes === undefined) throw new UsageError("give --block-count (0's based) or --data-size");
    using ctrl = await ctx.open();
    const ns = new Namespace(ctrl, nsid);
    const { lba, count, bytes } = transferRange(range, ns);
    const r = await readRange(ctrl, ns, { lba, count, output, bytes, progress: ctx.output === "json" ? undefined : "read" });
    if (r.brokenPipe) {
      process.exitCode = 141;
      return;
    }
    printTransferSummary(ctx.output === "json", {
      tool: "read",
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
  },
};

export const write: Command = {
  name: "write",
  summary: "Write blocks from a file or stdin, then Flush",
  description:
    "Writes --data (or stdin) to --block-count + 1 blocks from --start-block (default: the file's size, rounded up to\n" +
    "blocks, zero padded), in commands of at most MDTS, then sends Flush. The blocks' data is lost. The whole\n" +
    "range is checked first: a range past the end writes nothing.",
  device: true,
  options: { ...RANGE_OPTIONS, ...DATA_SIZE, data: { type: "string", short: "d", value: "FILE", help: "data to write (default stdin)", complete: "file" }, ...FUA, ...OUTPUT_OPTIONS, ...DEVICE_OPTIONS },
  async run(ctx) {
    const nsid = requireNsid(ctx);
    const range = rangeArgs(ctx);
    const file = input(ctx, "data to write");
    try {
      using ctrl = await ctx.open();
      const ns = new Namespace(ctrl, nsid);
      const { lba, count, bytes } = transferRange(range, ns, file.size);
      const limited = bytes === undefined ? file : { ...file, limit: bytes };
      const r = await writeRange(ctrl, ns, { lba, count, input: limited, fua: ctx.values["force-unit-access"] === true, progress: ctx.output === "json" ? undefined : "write" });
      const total = count * ns.lbaSize;
      printTransferSummary(ctx.output === "json", {
        tool: "write",
        ctrl: ctrl.name,
        nsid,
        lba,
        blocks: count,
        lbaSize: ns.lbaSize,
        byteFields: { inputBytes: BigInt(r.inputBytes), paddingBytes: BigInt(total - r.inputBytes) },
        commands: r.commands,
        maxBlocksPerCommand: r.chunkBlocks,
        seconds: r.seconds,
        fileFields: { input: file.name },
        afterCommands: " + Flush",
        tail: total > r.inputBytes ? ` (${total - r.inputBytes} bytes of zero padding)` : "",
      });
    } finally {
      file.close();
    }
  },
};

export const compare: Command = {
  name: "compare",
  summary: "Compare blocks with a file (the controller compares; exit 4 when they differ)",
  description:
    "Sends Compare for --block-count + 1 blocks from --start-block (default: the file's size in blocks) against\n" +
    "--data (or stdin), zero padded: the controller compares, no data comes back. Exit 0 when equal, 4 on the\n" +
    "first chunk the controller answers Compare Failure for.",
  device: true,
  options: { ...RANGE_OPTIONS, ...DATA_SIZE, data: { type: "string", short: "d", value: "FILE", help: "data to compare with (default stdin)", complete: "file" }, ...OUTPUT_OPTIONS, ...DEVICE_OPTIONS },
  async run(ctx) {
    const nsid = requireNsid(ctx);
    const range = rangeArgs(ctx);
    const file = input(ctx, "data to compare with");
    try {
      using ctrl = await ctx.open();
      const ns = new Namespace(ctrl, nsid);
      const { lba, count, bytes } = transferRange(range, ns, file.size);
      const limited = bytes === undefined ? file : { ...file, limit: bytes };
      const r = await compareRange(ctrl, ns, { lba, count, input: limited, progress: ctx.output === "json" ? undefined : "compare" });
      if (ctx.output === "json") {
        printJson({ nsid, lba: BigInt(lba), blocks: BigInt(count), lbaSize: ns.lbaSize, commands: r.commands, equal: r.mismatch === undefined, ...(r.mismatch ? { mismatchLba: BigInt(r.mismatch[0]), mismatchBlocks: r.mismatch[1] } : {}) });
      }
      if (r.mismatch) throw new MismatchError(`Compare Failure: blocks ${r.mismatch[0]}..${r.mismatch[0] + r.mismatch[1] - 1} of namespace ${nsid} differ from ${file.name}`);
      if (ctx.output !== "json") process.stderr.write(`compare: Success, ${count} blocks from LBA ${lba} equal ${file.name} (${r.commands} command${r.commands === 1 ? "" : "s"})\n`);
    } finally {
      file.close();
    }
  },
};

export const writeZeroes: Command = {
  name: "write-zeroes",
  summary: "Write Zeroes: blocks read back as zeros, no data transferred",
  description: "Sends Write Zeroes for --block-count + 1 blocks from --start-block, in commands of at most 65536 blocks;\nwith --deac the controller may deallocate them.",
  device: true,
  options: { ...RANGE_OPTIONS, deac: { type: "boolean", short: "d", help: "deallocate the blocks if the controller can (DEAC)" }, ...OUTPUT_OPTIONS, ...DEVICE_OPTIONS },
  async run(ctx) {
    const nsid = requireNsid(ctx);
    const lba = ctx.int("start-block") ?? 0;
    const count = (ctx.int("block-count") ?? 0) + 1;
    using ctrl = await ctx.open();
    const ns = new Namespace(ctrl, nsid);
    ns.checkSpan(lba, count);
    let commands = 0;
    for (let done = 0; done < count; commands++) {
      const n = Math.min(MAX_BLOCKS_PER_COMMAND, count - done);
      await ns.writeZeroes(lba + done, n, { deallocate: ctx.values.deac === true });
      done += n;
      await yieldForSignals();
    }
    if (ctx.output === "json") printJson({ nsid, lba: BigInt(lba), blocks: BigInt(count), commands, deac: ctx.values.deac === true });
    else process.stdout.write(`write-zeroes: Success, ${count} blocks from LBA ${lba} (${commands} command${commands === 1 ? "" : "s"})\n`);
  },
};

/** "0,100,200" -> numbers; UsageError naming the option. */
function list(name: string, v: unknown): number[] {
  if (typeof v !== "string" || v === "") throw new UsageError(`--${name} is required: a comma separated list`);
  return v.split(",").map((x) => {
    const n = Number(x.trim());
    if (!/^\s*(0x[0-9a-f]+|\d+)\s*$/i.test(x) || !Number.isSafeInteger(n)) throw new UsageError(`--${name}: "${x}" is not a non-negative integer`);
    return n;
  });
}

export const dsm: Command = {
  name: "dsm",
  summary: "Dataset Management: deallocate (TRIM) ranges of blocks",
  description: "Sends Dataset Management with Attribute - Deallocate (--ad) for up to 256 ranges: --slbs gives each range's\nfirst block and --blocks its length in blocks (not 0's based), as comma separated lists of equal length.",
  device: true,
  options: {
    ...NSID_OPTION("namespace (required)"),
    ad: { type: "boolean", short: "d", help: "Attribute - Deallocate (required: the one attribute libnvm sends)" },
    slbs: { type: "string", short: "s", value: "LIST", help: "first block of each range, e.g. 0,4096" },
    blocks: { type: "string", short: "b", value: "LIST", help: "blocks in each range, e.g. 8,16" },
    ...OUTPUT_OPTIONS,
    ...DEVICE_OPTIONS,
  },
  async run(ctx) {
    const nsid = requireNsid(ctx);
    if (ctx.values.ad !== true) throw new UsageError("--ad is required: libnvm sends Dataset Management with Attribute - Deallocate only");
    const slbs = list("slbs", ctx.values.slbs);
    const blocks = list("blocks", ctx.values.blocks);
    if (slbs.length !== blocks.length) throw new UsageError(`--slbs has ${slbs.length} ranges and --blocks ${blocks.length}: give one length per range`);
    using ctrl = await ctx.open();
    const ns = new Namespace(ctrl, nsid);
    const ranges = slbs.map((lba, i) => ({ lba, count: blocks[i]! }));
    await ns.deallocate(ranges);
    if (ctx.output === "json") printJson({ nsid, ranges: ranges.map((r) => ({ slba: BigInt(r.lba), nlb: r.count })) });
    else process.stdout.write(`dsm: Success, ${ranges.length} range${ranges.length === 1 ? "" : "s"} deallocated\n`);
  },
};

export const flush: Command = {
  name: "flush",
  summary: "Flush: the volatile write cache's data of a namespace reaches non-volatile media",
  description: "Sends Flush for --namespace-id.",
  device: true,
  options: { ...NSID_OPTION("namespace (required)"), ...OUTPUT_OPTIONS, ...DEVICE_OPTIONS },
  async run(ctx) {
    const nsid = requireNsid(ctx);
    using ctrl = await ctx.open();
    await new Namespace(ctrl, nsid).flush();
    if (ctx.output === "json") printJson({ nsid, flushed: true });
    else process.stdout.write(`flush: Success, namespace ${nsid}\n`);
  },
};
