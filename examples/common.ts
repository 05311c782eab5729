/**
 * Shared command-line handling for the examples: --ctrl (a BDF, /dev/disnvmN or smartio:<fdid>),
 * --backend, --force, --json, --help;
 * usage errors exit 2, failures print the error's one-line cause and exit 1.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { Controller, type ControllerOptions } from "../lib/controller.ts";
import type { BackendChoice } from "../lib/backends/index.ts";
import { NvmeError } from "../lib/errors.ts";

export const commonOptions = {
  ctrl: { type: "string" },
  backend: { type: "string", default: "auto" },
  force: { type: "boolean", default: false },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const satisfies NonNullable<ParseArgsConfig["options"]>;

/** Lines every example's usage ends with. */
export const commonUsage = `  --ctrl=C       a PCI address (05:00.0), /dev/disnvmN, or smartio:<fdid> (a controller borrowed across a
                 Dolphin SmartIO cluster; the fabric device id in hex, as \`smartio_tool list\` prints it)
  --backend=B    auto (default: by the bound driver, or smartio for smartio:<fdid>), sysfs, vfio, disnvm or smartio
  --force        open even if another process owns the controller (it is reset under that process)
`;

const BACKENDS = ["auto", "sysfs", "vfio", "disnvm", "smartio"] as const;

/** Controller.open with the --ctrl, --backend and --force the user gave. */
export function openController(args: { ctrl: string; backend?: unknown; force?: unknown }, opts: ControllerOptions = {}): Controller {
  const backend = (args.backend ?? "auto") as string;
  if (!(BACKENDS as readonly string[]).includes(backend)) throw new UsageError(`--backend=${backend}: choose one of ${BACKENDS.join(", ")}`);
  return Controller.open(args.ctrl, { ...opts, backend: backend as BackendChoice, force: args.force === true });
}

export class UsageError extends Error {}

export function parse<O extends NonNullable<ParseArgsConfig["options"]>>(usage: string, options: O) {
  let parsed;
  try {
    parsed = parseArgs({ args: Bun.argv.slice(2), options: { ...commonOptions, ...options }, strict: true, allowPositionals: false });
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${usage}`);
    process.exit(2);
  }
  const values = parsed.values as Record<string, unknown>;
  if (values.help) {
    process.stdout.write(usage + commonUsage);
    process.exit(0);
  }
  if (typeof values.ctrl !== "string" || values.ctrl === "") {
    process.stderr.write(`--ctrl is required\n${usage}`);
    process.exit(2);
  }
  return parsed.values as typeof parsed.values & { ctrl: string; json: boolean };
}

/** Integer option: undefined when absent, exit 2 when not a non-negative integer. */
export function intOption(name: string, v: unknown, usage: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== "string" || !/^(0x[0-9a-f]+|\d+)$/i.test(v) || !Number.isSafeInteger(n)) {
    process.stderr.write(`--${name}: "${String(v)}" is not a non-negative integer\n${usage}`);
    process.exit(2);
  }
  return n;
}

/** Run main; print a failure's cause on one line and exit 1. */
export async function run(main: () => Promise<void> | void): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${e.message}\n`);
      process.exit(2);
    }
    const msg = e instanceof NvmeError ? `${e.name}: ${e.message}` : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    process.stderr.write(`error: ${msg}\n`);
    process.exit(1);
  }
}

/** JSON with bigints as strings (u64 values do not fit a JSON number). */
export function toJson(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x), 2);
}

/**
 * Let the event loop run at least every 50 ms: SIGINT/SIGTERM handlers (the controller's, which
 * shut it down and exit) are macrotasks, and a command that completes by the time it is awaited
 * never leaves the microtask queue.
 */
let lastYield = performance.now();
export async function yieldForSignals(): Promise<void> {
  if (performance.now() - lastYield < 50) return;
  await new Promise((resolve) => setImmediate(resolve));
  lastYield = performance.now();
}

/** What read-blocks and write-blocks report at the end of a transfer. */
export interface TransferSummary {
  /** The tool's name, which starts the text line ("read-blocks"). */
  readonly tool: string;
  readonly ctrl: string;
  readonly nsid: number;
  readonly lba: number;
  readonly blocks: number;
  readonly lbaSize: number;
  readonly commands: number;
  readonly maxBlocksPerCommand: number;
  readonly seconds: number;
  /** The tool's own JSON fields, right after `bytes` (write-blocks: inputBytes, paddingBytes). */
  readonly byteFields?: Record<string, unknown>;
  /** The JSON fields that end the object: the file (`output`, left out when undefined; `input`). */
  readonly fileFields: Record<string, unknown>;
  /** Text right after "N commands" (write-blocks: " + Flush"). */
  readonly afterCommands?: string;
  /** Text that ends the line (read-blocks: " -> FILE"; write-blocks: the zero padding). */
  readonly tail?: string;
}

/**
 * The end-of-transfer summary of `blocks` × `lbaSize` bytes: with --json one JSON object on stdout
 * (u64 counts as strings), else one line on stderr,
 * "<tool>: B bytes, N blocks, C commands, S s, R MiB/s".
 */
export function printTransferSummary(json: boolean, s: TransferSummary): void {
  const bytes = s.blocks * s.lbaSize;
  const mibPerSec = bytes / (1024 * 1024) / s.seconds;
  if (json) {
    process.stdout.write(
      toJson({
        ctrl: s.ctrl,
        nsid: s.nsid,
        lba: BigInt(s.lba),
        blocks: BigInt(s.blocks),
        lbaSize: s.lbaSize,
        bytes: BigInt(bytes),
        ...s.byteFields,
        commands: s.commands,
        maxBlocksPerCommand: s.maxBlocksPerCommand,
        seconds: Number(s.seconds.toFixed(6)),
        mibPerSec,
        ...s.fileFields,
      }) + "\n",
    );
  } else {
    process.stderr.write(
      `${s.tool}: ${bytes} bytes, ${s.blocks} blocks, ${s.commands} command${s.commands === 1 ? "" : "s"}${s.afterCommands ?? ""}, ` +
        `${s.seconds.toFixed(2)} s, ${mibPerSec.toFixed(1)} MiB/s${s.tail ?? ""}\n`,
    );
  }
}
