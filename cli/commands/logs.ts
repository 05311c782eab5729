/** smart-log, error-log, fw-log: Get Log Page (admin opcode 02h) for LIDs 02h, 01h and 03h. */
import { ERROR_LOG_ENTRY_SIZE, FW_SLOT_LOG_SIZE, LID_ERROR, LID_FW_SLOT, LID_SMART, parseErrorLog, parseFirmwareSlotLog, parseSmartLog, SMART_LOG_SIZE } from "../../lib/spec/log.ts";
import { DEVICE_OPTIONS, HUMAN_OPTION, NSID_OPTION, OUTPUT_OPTIONS, RAW_OPTION, type Command } from "../cli.ts";
import { UsageError } from "../common.ts";
import { printJson } from "../json.ts";
import { errorLogJson, fwLogJson, smartLogJson } from "../nvme-cli.ts";
import { errorLogText, fwLogText, smartLogText } from "../text.ts";
import { writeRaw } from "./identify.ts";

export const smartLog: Command = {
  name: "smart-log",
  summary: "SMART / Health Information log: temperature, wear, counters",
  description: "Reads the SMART / Health Information log page (LID 02h), controller-wide unless --namespace-id names a\nnamespace (when the controller keeps the log per namespace: Identify Controller LPA bit 0).",
  device: true,
  options: { ...NSID_OPTION("namespace (default 0xffffffff: the whole controller)"), ...OUTPUT_OPTIONS, ...HUMAN_OPTION, ...RAW_OPTION, ...DEVICE_OPTIONS },
  async run(ctx) {
    const nsid = ctx.int("namespace-id", 0xffffffff) ?? 0xffffffff;
    if (nsid === 0) throw new UsageError("--namespace-id=0: a namespace is 1 to 0xfffffffe, or 0xffffffff for the controller");
    using ctrl = await ctx.open();
    const raw = ctrl.getLogPage(LID_SMART, SMART_LOG_SIZE, { nsid });
    if (ctx.output === "binary") return writeRaw(raw);
    const s = parseSmartLog(raw);
    if (ctx.output === "json") printJson(smartLogJson(s, ctx.human));
    else process.stdout.write(smartLogText(s, ctrl.name, nsid, ctx.human));
  },
};

export const errorLog: Command = {
  name: "error-log",
  summary: "Error Information log: the controller's most recent command errors",
  description: "Reads the Error Information log page (LID 01h): --log-entries entries (default: all the controller keeps,\nIdentify Controller ELPE + 1), unused ones (error_count 0) included as nvme-cli prints them.",
  device: true,
  options: {
    "log-entries": { type: "string", short: "e", value: "NUM", help: "entries to read (default ELPE + 1)" },
    ...OUTPUT_OPTIONS,
    ...RAW_OPTION,
    ...DEVICE_OPTIONS,
  },
  async run(ctx) {
    const asked = ctx.int("log-entries", 0xffff);
    if (asked === 0) throw new UsageError("--log-entries=0: read at least one entry");
    using ctrl = await ctx.open();
    const entries = Math.min(asked ?? ctrl.info.elpe + 1, ctrl.info.elpe + 1);
    const raw = ctrl.getLogPage(LID_ERROR, entries * ERROR_LOG_ENTRY_SIZE);
    if (ctx.output === "binary") return writeRaw(raw);
    const log = parseErrorLog(raw, entries, { keepUnused: true });
    if (ctx.output === "json") printJson(errorLogJson(log));
    else process.stdout.write(errorLogText(log, ctrl.name));
  },
};

export const fwLog: Command = {
  name: "fw-log",
  summary: "Firmware Slot Information log: the active slot and each slot's revision",
  description: "Reads the Firmware Slot Information log page (LID 03h). In JSON the object is keyed by the device, as in\nnvme-cli (there the kernel's name, such as nvme0; here the controller's address).",
  device: true,
  options: { ...OUTPUT_OPTIONS, ...RAW_OPTION, ...DEVICE_OPTIONS },
  async run(ctx) {
    using ctrl = await ctx.open();
    const raw = ctrl.getLogPage(LID_FW_SLOT, FW_SLOT_LOG_SIZE);
    if (ctx.output === "binary") return writeRaw(raw);
    const fw = parseFirmwareSlotLog(raw);
    if (ctx.output === "json") printJson(fwLogJson(raw, fw, ctrl.name));
    else process.stdout.write(fwLogText(raw, fw, ctrl.name));
  },
};
