/** format: Format NVM (admin opcode 80h), a long admin command with its own timeout and progress. */
import { FORMAT_TIMEOUT_MS } from "../../lib/spec/commands.ts";
import { DEVICE_OPTIONS, NSID_OPTION, OUTPUT_OPTIONS, type Command } from "../cli.ts";
import { UsageError } from "../common.ts";
import { printJson } from "../json.ts";
import { Ticker } from "../progress.ts";
import { binaryBytes, siBytes } from "../units.ts";
import { requireNsid } from "./identify.ts";

/** How long a format without --force waits for a Ctrl-C, as nvme-cli does. */
const WARNING_SECONDS = 10;

export const format: Command = {
  name: "format",
  summary: "Format NVM: a new LBA format (block size, metadata), optionally a secure erase",
  description:
    "Sends Format NVM for --namespace-id (0xffffffff: every namespace) with LBA format --lbaf (or the format whose\n" +
    "data size is --block-size, without metadata). The namespace's data is lost. The format runs as a long admin\n" +
    "command: its own timeout (--timeout, default 600000 ms), then Abort, then a controller reset; progress on a\n" +
    "terminal. Formats with metadata are allowed (libnvm's I/O commands refuse such a namespace; id-ns shows it).\n" +
    `Without --force it warns and waits ${WARNING_SECONDS} seconds for Ctrl-C first, as nvme-cli does.`,
  device: true,
  options: {
    ...NSID_OPTION("namespace to format, or 0xffffffff for all (required)"),
    lbaf: { type: "string", short: "l", value: "NUM", help: "LBA format index from id-ns (required unless --block-size)" },
    "block-size": { type: "string", short: "b", value: "BYTES", help: "pick the LBA format with this data size and no metadata" },
    ses: { type: "string", short: "s", value: "NUM", help: "secure erase: 0 none (default), 1 user data erase, 2 cryptographic erase" },
    pi: { type: "string", short: "i", value: "NUM", help: "protection information: 0 none (default), 1-3 type 1-3" },
    pil: { type: "string", short: "p", value: "NUM", help: "protection information in the first (1) or last (0, default) 8 bytes of metadata" },
    ms: { type: "string", short: "m", value: "NUM", help: "metadata settings: 1 extended LBA (interleaved), 0 separate buffer (default)" },
    reset: { type: "boolean", short: "r", help: "reset the controller after the format" },
    force: { type: "boolean", short: "f", help: `do not warn and wait ${WARNING_SECONDS} seconds first` },
    ...OUTPUT_OPTIONS,
    ...DEVICE_OPTIONS,
    timeout: { type: "string", short: "t", value: "MS", help: `how long the format may take in milliseconds (default ${FORMAT_TIMEOUT_MS})` },
  },
  async run(ctx) {
    const nsid = requireNsid(ctx, true);
    const lbafArg = ctx.int("lbaf", 63);
    const blockSize = ctx.int("block-size");
    if ((lbafArg === undefined) === (blockSize === undefined)) throw new UsageError("give --lbaf or --block-size (one of them)");
    if (blockSize !== undefined && nsid === 0xffffffff) throw new UsageError("--block-size needs one namespace's formats: give --lbaf with --namespace-id=0xffffffff");
    const ses = ctx.int("ses", 2) ?? 0;
    const pi = ctx.int("pi", 3) ?? 0;
    const pil = ctx.int("pil", 1) ?? 0;
    const mset = ctx.int("ms", 1) ?? 0;
    const timeoutMs = ctx.int("timeout") ?? FORMAT_TIMEOUT_MS;
    if (timeoutMs === 0) throw new UsageError("--timeout=0: a format needs some time");
    const all = nsid === 0xffffffff;

    using ctrl = await ctx.open();
    let lbaf = lbafArg;
    if (lbaf === undefined) {
      const id = ctrl.identifyNamespace(nsid);
      lbaf = id.lbaf.findIndex((f) => f.ms === 0 && f.lbads >= 9 && 2 ** f.lbads === blockSize);
      if (lbaf < 0) {
        const have = id.lbaf.map((f, i) => `${i}: ${2 ** f.lbads}+${f.ms}`).join(", ");
        throw new UsageError(`namespace ${nsid} has no LBA format of ${blockSize}-byte blocks without metadata (it has ${have})`);
      }
    }
    const what = all ? "every namespace" : `namespace ${nsid}`;
    if (ctx.values.force !== true) {
      process.stderr.write(
        `You are about to format ${what} of ${ctrl.name} to LBA format ${lbaf}${ses ? ` with secure erase ${ses}` : ""}.\n` +
          `WARNING: its data will be lost. You have ${WARNING_SECONDS} seconds to press Ctrl-C to cancel.\n` +
          "Use --force to skip this warning.\n",
      );
      // Asleep on the event loop, so Ctrl-C reaches the controller's handler (it closes and exits).
      await Bun.sleep(WARNING_SECONDS * 1000);
    }
    const ticker = new Ticker(ctx.output === "json" ? false : undefined);
    const t0 = performance.now();
    let id;
    try {
      id = await ctrl.formatNvm(nsid, {
        lbaf,
        ses,
        pi,
        pil,
        mset,
        timeoutMs,
        onProgress: (p) => ticker.tick(`format: ${what}, ${(p.elapsedMs / 1000).toFixed(0)} s${p.percentRemaining !== null ? `, ${p.percentRemaining}% left` : ""}`),
      });
    } finally {
      ticker.done();
    }
    const seconds = (performance.now() - t0) / 1000;
    if (ctx.values.reset === true) ctrl.reset();
    if (ctx.output === "json") {
      printJson({
        nsid,
        lbaf,
        ses,
        seconds: Number(seconds.toFixed(3)),
        ...(id ? { lbaSize: id.lbaSize, metadataSize: id.metadataSize, nsze: id.nsze } : {}),
        reset: ctx.values.reset === true,
      });
      return;
    }
    process.stdout.write(`Success formatting namespace:${nsid.toString(16)}\n`);
    if (id) {
      process.stdout.write(
        `namespace ${nsid}: LBA format ${id.formatIndex}, ${binaryBytes(id.lbaSize)} blocks${id.metadataSize ? ` + ${id.metadataSize} bytes of metadata` : ""}, ` +
          `${id.nsze} blocks (${siBytes(id.nsze * BigInt(id.lbaSize))}), ${seconds.toFixed(2)} s\n`,
      );
    }
  },
};
