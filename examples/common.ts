/**
 * Shared command-line handling for the examples: --ctrl (a BDF, /dev/disnvmN or smartio:<fdid>),
 * --backend, --force, --json, --help; usage errors exit 2, failures print the error's one-line
 * cause and exit 1. What the `libnvm` command shares with them (opening the controller, options,
 * summaries) is in cli/common.ts.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { NvmeError } from "../lib/errors.ts";
import { parseInteger, UsageError } from "../cli/common.ts";

export { printTransferSummary, toJson, UsageError, yieldForSignals, type TransferSummary } from "../cli/common.ts";
export { openController } from "../cli/open.ts";

export const commonOptions = {
  ctrl: { type: "string" },
  backend: { type: "string", default: "auto" },
  force: { type: "boolean", default: false },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const satisfies NonNullable<ParseArgsConfig["options"]>;

/** Lines every example's usage ends with. */
export const commonUsage = `  --ctrl=C       a PCI address (05:00.0), /dev/disnvmN, or smartio:<fdid> (a controller borrowed across a
                 Dolphin SmartIO cluster; the fabric device id in hex, as \`smartio_tool list\` prints it), or
                 unix:PATH (a controller another process serves: examples/serve.ts), or smartio-rpc:<fdid>
                 (one a process of the SmartIO cluster serves: examples/serve.ts --sisci)
  --backend=B    auto (default: by the bound driver, or smartio for smartio:<fdid>), sysfs, vfio, disnvm or smartio
  --force        open even if another process owns the controller (it is reset under that process)
`;

/**
 * Parse `argv` (default: this process's arguments) with the common options and `options`;
 * --help prints `usage` and exits 0; a usage error throws UsageError carrying the usage text.
 */
export function parse<O extends NonNullable<ParseArgsConfig["options"]>>(usage: string, options: O, argv: string[] = Bun.argv.slice(2)) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { ...commonOptions, ...options }, strict: true, allowPositionals: false });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n${usage}`);
  }
  const values = parsed.values as Record<string, unknown>;
  if (values.help) {
    process.stdout.write(usage + commonUsage);
    process.exit(0);
  }
  if (typeof values.ctrl !== "string" || values.ctrl === "") throw new UsageError(`--ctrl is required\n${usage}`);
  return parsed.values as typeof parsed.values & { ctrl: string; json: boolean };
}

/** Integer option: undefined when absent; UsageError (with the usage text) when not a non-negative integer. */
export function intOption(name: string, v: unknown, usage: string): number | undefined {
  try {
    return parseInteger(name, v);
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n${usage}`);
  }
}

/** Run main; print a failure's cause on one line and exit 1 (a usage error: its text, exit 2). */
export async function run(main: () => Promise<void> | void): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${e.message}${e.message.endsWith("\n") ? "" : "\n"}`);
      process.exit(2);
    }
    const msg = e instanceof NvmeError ? `${e.name}: ${e.message}` : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    process.stderr.write(`error: ${msg}\n`);
    process.exit(1);
  }
}
