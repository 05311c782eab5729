/** get-feature, set-feature: Get Features (0Ah) and Set Features (09h). */
import { readFileSync } from "node:fs";
import { featureName } from "../../lib/spec/commands.ts";
import { DEVICE_OPTIONS, HUMAN_OPTION, NSID_OPTION, OUTPUT_OPTIONS, RAW_OPTION, type Command, type Context } from "../cli.ts";
import { UsageError } from "../common.ts";
import { printJson } from "../json.ts";
import { featureLines } from "../decode.ts";
import { InputError } from "../transfer.ts";
import { writeRaw } from "./identify.ts";

const SELECT = ["current", "default", "saved", "supported capabilities"];
const hex8 = (v: number) => `0x${(v >>> 0).toString(16).padStart(8, "0")}`;

function fid(ctx: Context): number {
  const f = ctx.int("feature-id", 0xff);
  if (f === undefined) throw new UsageError("--feature-id (-f) is required");
  return f;
}

/** Bytes as hex lines of 16 ("0000: 01 02 ..."). */
function hexDump(data: Uint8Array): string {
  let out = "";
  for (let o = 0; o < data.length; o += 16) {
    out += `${o.toString(16).padStart(4, "0")}: ${[...data.subarray(o, o + 16)].map((b) => b.toString(16).padStart(2, "0")).join(" ")}\n`;
  }
  return out;
}

export const getFeature: Command = {
  name: "get-feature",
  summary: "Get Features: a feature's current, default, saved value or capabilities",
  description:
    "Sends Get Features for --feature-id and prints its value (completion DW0), decoded with -H, and the data\nstructure of features that return one (--data-len). A feature the controller does not support fails with its\nstatus (exit 1).",
  device: true,
  options: {
    "feature-id": { type: "string", short: "f", value: "FID", help: "feature identifier, e.g. 6 (Volatile Write Cache), 7 (Number of Queues) (required)" },
    ...NSID_OPTION("namespace, for namespace specific features (default 0)"),
    sel: { type: "string", short: "s", value: "SEL", help: "0 current (default), 1 default, 2 saved, 3 supported capabilities" },
    cdw11: { type: "string", short: "c", value: "NUM", help: "feature specific CDW11 (default 0)" },
    "data-len": { type: "string", short: "l", value: "BYTES", help: "bytes of data the feature returns, up to 4096 (default 0)" },
    ...OUTPUT_OPTIONS,
    ...HUMAN_OPTION,
    ...RAW_OPTION,
    ...DEVICE_OPTIONS,
  },
  async run(ctx) {
    const f = fid(ctx);
    const sel = ctx.int("sel", 3) ?? 0;
    const nsid = ctx.int("namespace-id", 0xffffffff) ?? 0;
    const cdw11 = ctx.int("cdw11", 0xffffffff) ?? 0;
    const dataLength = ctx.int("data-len", 4096) ?? 0;
    using ctrl = await ctx.open();
    const r = ctrl.getFeature(f, { sel, nsid, cdw11, dataLength });
    if (ctx.output === "binary") return writeRaw(r.data ?? new Uint8Array(0));
    if (ctx.output === "json") {
      // nvme-cli 2.3 prints no JSON for get-feature: these keys are libnvm's own.
      printJson({
        feature_id: f,
        name: featureName(f),
        sel,
        value: r.dw0 >>> 0,
        ...(r.data ? { data: [...r.data].map((b) => b.toString(16).padStart(2, "0")).join("") } : {}),
      });
      return;
    }
    const name = SELECT[sel]!;
    let out = `get-feature:0x${f.toString(16).padStart(2, "0")} (${featureName(f)}), ${name[0]!.toUpperCase()}${name.slice(1)} value:${hex8(r.dw0)}\n`;
    if (ctx.human && sel !== 3) out += featureLines(f, r.dw0 >>> 0, r.data).map((l) => l + "\n").join("");
    if (r.data) out += hexDump(r.data);
    process.stdout.write(out);
  },
};

export const setFeature: Command = {
  name: "set-feature",
  summary: "Set Features: change a feature's value (with --save, across power cycles)",
  description: "Sends Set Features for --feature-id with --value as CDW11 (and --cdw12, and --data for features that take a\ndata structure). A feature the controller does not support or cannot change fails with its status (exit 1).",
  device: true,
  options: {
    "feature-id": { type: "string", short: "f", value: "FID", help: "feature identifier (required)" },
    value: { type: "string", short: "v", value: "NUM", help: "new value: CDW11 (default 0)" },
    cdw12: { type: "string", value: "NUM", help: "feature specific CDW12 (default 0)" },
    ...NSID_OPTION("namespace, for namespace specific features (default 0)"),
    save: { type: "boolean", short: "s", help: "keep the value across power cycles (Save, SV)" },
    data: { type: "string", short: "d", value: "FILE", help: "the feature's data structure, up to 4096 bytes", complete: "file" },
    ...OUTPUT_OPTIONS,
    ...DEVICE_OPTIONS,
  },
  async run(ctx) {
    const f = fid(ctx);
    const cdw11 = ctx.int("value", 0xffffffff) ?? 0;
    const cdw12 = ctx.int("cdw12", 0xffffffff) ?? 0;
    const nsid = ctx.int("namespace-id", 0xffffffff) ?? 0;
    const save = ctx.values.save === true;
    let data: Uint8Array | undefined;
    if (typeof ctx.values.data === "string") {
      try {
        data = readFileSync(ctx.values.data);
      } catch (e) {
        throw new InputError(`cannot read ${ctx.values.data}: ${(e as Error).message}`);
      }
      if (data.length > 4096) throw new UsageError(`--data=${ctx.values.data} is ${data.length} bytes: a feature's data is at most 4096`);
    }
    using ctrl = await ctx.open();
    const r = ctrl.setFeature(f, { cdw11, cdw12, nsid, save, data });
    if (ctx.output === "json") printJson({ feature_id: f, name: featureName(f), value: cdw11, cdw12, save, result: r.dw0 >>> 0 });
    else process.stdout.write(`set-feature:0x${f.toString(16).padStart(2, "0")} (${featureName(f)}), value:${hex8(cdw11)}, cdw12:${hex8(cdw12)}, save:${save ? 1 : 0}\n`);
  },
};
