/** id-ctrl, id-ns, list-ns: Identify (admin opcode 06h) with CNS 01h, 00h, 02h and 10h. */
import { writeSync } from "node:fs";
import { CNS_ACTIVE_NAMESPACES, CNS_ALLOCATED_NAMESPACES, CNS_CONTROLLER, CNS_NAMESPACE } from "../../lib/spec/commands.ts";
import { parseIdentifyController, parseIdentifyNamespace, parseNamespaceList } from "../../lib/spec/identify.ts";
import { DEVICE_OPTIONS, HUMAN_OPTION, NSID_OPTION, OUTPUT_OPTIONS, RAW_OPTION, type Command, type Context } from "../cli.ts";
import { UsageError } from "../common.ts";
import { printJson } from "../json.ts";
import { idCtrlJson, idNsJson, listNsJson } from "../nvme-cli.ts";
import { idCtrlText, idNsText, listNsText } from "../text.ts";

/** Raw bytes on stdout (-b), refused on a terminal. */
export function writeRaw(bytes: Uint8Array): void {
  if (process.stdout.isTTY) throw new UsageError("refusing to write binary data to a terminal: redirect stdout");
  for (let done = 0; done < bytes.length; ) done += writeSync(1, bytes, done, bytes.length - done);
}

/** The -n value: required, 1 to FFFFFFFEh (or FFFFFFFFh where `broadcast`). */
export function requireNsid(ctx: Context, broadcast = false): number {
  const nsid = ctx.int("namespace-id", 0xffffffff);
  if (nsid === undefined) throw new UsageError("--namespace-id (-n) is required");
  if (nsid === 0 || (nsid === 0xffffffff && !broadcast)) throw new UsageError(`--namespace-id=${nsid}: a namespace is 1 to 0xfffffffe`);
  return nsid;
}

export const idCtrl: Command = {
  name: "id-ctrl",
  summary: "Identify Controller: the controller's capabilities and identity",
  description: "Sends Identify (CNS 01h) and prints the Identify Controller data structure with nvme-cli's field names;\n-o json prints nvme-cli's JSON, -H decodes bit fields, -b writes the 4096 raw bytes.",
  device: true,
  options: { ...OUTPUT_OPTIONS, ...HUMAN_OPTION, ...RAW_OPTION, ...DEVICE_OPTIONS },
  async run(ctx) {
    using ctrl = await ctx.open();
    const raw = ctrl.identify(CNS_CONTROLLER);
    if (ctx.output === "binary") return writeRaw(raw);
    const id = parseIdentifyController(raw);
    if (ctx.output === "json") printJson(idCtrlJson(raw, id));
    else process.stdout.write(idCtrlText(raw, id, ctx.human));
  },
};

export const idNs: Command = {
  name: "id-ns",
  summary: "Identify Namespace: size, capacity, utilization and LBA formats",
  description:
    "Sends Identify (CNS 00h) for one namespace and prints the Identify Namespace data structure with nvme-cli's\nfield names, the LBA format in use marked; works for namespaces formatted with metadata too.",
  device: true,
  options: { ...NSID_OPTION("namespace to identify (required)"), ...OUTPUT_OPTIONS, ...HUMAN_OPTION, ...RAW_OPTION, ...DEVICE_OPTIONS },
  async run(ctx) {
    const nsid = requireNsid(ctx);
    using ctrl = await ctx.open();
    const raw = ctrl.identify(CNS_NAMESPACE, nsid);
    if (ctx.output === "binary") return writeRaw(raw);
    const ns = parseIdentifyNamespace(raw);
    if (ctx.output === "json") printJson(idNsJson(raw, ns));
    else process.stdout.write(idNsText(raw, ns, nsid, ctx.human));
  },
};

export const listNs: Command = {
  name: "list-ns",
  summary: "the namespace IDs of the controller (active, or with -a allocated)",
  description: "Sends Identify with CNS 02h (active namespaces) or 10h (-a: allocated namespaces, attached or not) and prints\nup to 1024 NSIDs greater than --namespace-id.",
  device: true,
  options: {
    ...NSID_OPTION("list NSIDs greater than this one (default 0)"),
    all: { type: "boolean", short: "a", help: "allocated namespaces (CNS 10h; needs Namespace Management) instead of active ones" },
    ...OUTPUT_OPTIONS,
    ...DEVICE_OPTIONS,
  },
  async run(ctx) {
    const after = ctx.int("namespace-id", 0xfffffffe) ?? 0;
    using ctrl = await ctx.open();
    const nsids = parseNamespaceList(ctrl.identify(ctx.values.all ? CNS_ALLOCATED_NAMESPACES : CNS_ACTIVE_NAMESPACES, after));
    if (ctx.output === "json") printJson(listNsJson(nsids));
    else process.stdout.write(listNsText(nsids));
  },
};
