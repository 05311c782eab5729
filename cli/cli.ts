/**
 * The frame of every `libnvm` subcommand: its options (one table for parsing, --help and shell
 * completion), the device argument, output formats, opening the controller, and how a failure
 * becomes one line on stderr and an exit status (EXIT).
 */
import { parseArgs } from "node:util";
import type { Controller, ControllerOptions } from "../lib/controller.ts";
import {
  ConnectionError,
  ControllerBusyError,
  ControllerFatalError,
  DeviceError,
  InvalidArgumentError,
  NativeError,
  NvmeStatusError,
  NvmeTimeoutError,
  PermissionError,
  SmartIoError,
  UnsupportedError,
} from "../lib/errors.ts";
import { BACKENDS, parseInteger, UsageError } from "./common.ts";
import { InputError, OutputError } from "./transfer.ts";

/** Exit statuses, documented in `libnvm --help` and the README. */
export const EXIT = {
  /** Success. */
  OK: 0,
  /** The controller failed the command (its status, named), a timeout, or a controller failure. */
  CONTROLLER: 1,
  /** Usage: unknown command or option, a missing or malformed value, or a value refused before anything was sent. */
  USAGE: 2,
  /** The device cannot be used as asked: not found, unreachable, bound to another driver, no permission, owned by another process, unsupported format, refused or missing SmartIO (SISCI). */
  DEVICE: 3,
  /** compare: the data differ (Compare Failure). */
  MISMATCH: 4,
  /** A local file could not be read or written. */
  FILE: 5,
} as const;

/** compare found data that differ: exit status 4. */
export class MismatchError extends Error {
  override readonly name = "MismatchError";
}

/** The exit status for a failure. */
export function exitCodeFor(e: unknown): number {
  if (e instanceof UsageError || e instanceof InvalidArgumentError) return EXIT.USAGE;
  if (e instanceof MismatchError) return EXIT.MISMATCH;
  if (e instanceof InputError || e instanceof OutputError) return EXIT.FILE;
  if (e instanceof DeviceError || e instanceof PermissionError || e instanceof ControllerBusyError || e instanceof UnsupportedError || e instanceof NativeError || e instanceof ConnectionError || e instanceof SmartIoError) return EXIT.DEVICE;
  if (e instanceof NvmeStatusError || e instanceof NvmeTimeoutError || e instanceof ControllerFatalError) return EXIT.CONTROLLER;
  return EXIT.CONTROLLER;
}

export interface OptionSpec {
  readonly type: "string" | "boolean";
  readonly short?: string;
  /** The value's placeholder in --help ("NUM", "FILE"). */
  readonly value?: string;
  readonly help: string;
  /** What shell completion offers for the value: these words, or file names. */
  readonly complete?: readonly string[] | "file";
}

export type Options = Readonly<Record<string, OptionSpec>>;

export interface Context {
  /** The controller argument: a PCI address, /dev/disnvmN or smartio:<fdid> ("" for commands without one). */
  readonly device: string;
  readonly values: Readonly<Record<string, string | boolean | undefined>>;
  /** Positional arguments after the device. */
  readonly positionals: readonly string[];
  /** For a passThrough command: every argument after the device, as given. */
  readonly argv: readonly string[];
  /** -o / --output-format, --json, -b. */
  readonly output: "normal" | "json" | "binary";
  /** -H / --human-readable. */
  readonly human: boolean;
  /**
   * Open the controller named by the device argument with --backend, --force-open and --timeout.
   * Async only to load the driver when a command first needs it.
   */
  open(opts?: ControllerOptions): Promise<Controller>;
  /** A non-negative integer option (decimal or 0x hex), or undefined. */
  int(name: string, max?: number): number | undefined;
}

export interface Command {
  readonly name: string;
  /** One line for `libnvm --help`. */
  readonly summary: string;
  /** What `libnvm NAME --help` says after the usage line. */
  readonly description: string;
  /** The first positional argument is the controller. */
  readonly device: boolean;
  /** The controller may be given, or not (list: every PCI controller, or the subsystems an NVMe/TCP target offers). */
  readonly optionalDevice?: boolean;
  readonly options: Options;
  /** Positional arguments besides the device, for the usage line and completion. */
  readonly positionals?: { readonly name: string; readonly values: readonly string[] };
  /**
   * Hand every argument after the device to the command (ctx.argv) unparsed: perf, whose own parser
   * takes them. The device must then come first.
   */
  readonly passThrough?: boolean;
  /** --help text, when it is not built from `options`. */
  help?(): Promise<string> | string;
  run(ctx: Context): Promise<void> | void;
}

/** --backend, --force-open, --timeout: every command that opens a controller. */
export const DEVICE_OPTIONS: Options = {
  backend: { type: "string", value: "B", help: "how to reach the controller: auto (by its bound driver), sysfs, vfio, disnvm or smartio", complete: BACKENDS },
  "force-open": { type: "boolean", help: "open even if another live process owns the controller (it is reset under that process; sysfs only)" },
  timeout: { type: "string", short: "t", value: "MS", help: "per-command timeout in milliseconds (default 10000)" },
};

export const OUTPUT_OPTIONS: Options = {
  "output-format": { type: "string", short: "o", value: "FMT", help: "normal (default) or json", complete: ["normal", "json"] },
  json: { type: "boolean", help: "the same as -o json" },
};

export const RAW_OPTION: Options = {
  "raw-binary": { type: "boolean", short: "b", help: "write the structure's raw bytes to stdout" },
};

export const HUMAN_OPTION: Options = {
  "human-readable": { type: "boolean", short: "H", help: "decode bit fields" },
};

export const NSID_OPTION = (help: string): Options => ({
  "namespace-id": { type: "string", short: "n", value: "NSID", help },
});

const HELP_OPTION: Options = { help: { type: "boolean", short: "h", help: "this text" } };

/** The usage line: `libnvm NAME <device> [OPTIONS]`. */
export function usageLine(c: Command): string {
  return `libnvm ${c.name}${c.device ? " <device>" : c.optionalDevice ? " [<nvme+tcp://HOST:PORT>]" : ""}${c.positionals ? ` <${c.positionals.name}>` : ""} [OPTIONS]`;
}

/** `libnvm NAME --help`. */
export function commandHelp(c: Command): string {
  const opts = { ...c.options, ...HELP_OPTION };
  const rows = Object.entries(opts).map(([name, o]) => {
    const left = `${o.short ? `-${o.short}, ` : "    "}--${name}${o.type === "string" ? `=${o.value ?? "VALUE"}` : ""}`;
    return [left, o.help] as const;
  });
  const width = Math.max(...rows.map(([l]) => l.length)) + 2;
  const device = c.device
    ? "\n<device> is the controller: its PCI address (0000:05:00.0 or 05:00.0), /dev/disnvmN, smartio:<fdid> for one\nborrowed across a Dolphin SmartIO cluster (the fabric device id in hex, as `smartio_tool list` prints it), an\nNVMe/TCP address nvme+tcp://HOST[:PORT]/SUBNQN[?hdr-digest=1&data-digest=1&queue-size=N...], or unix:PATH for one\nanother process serves (examples/serve.ts), or smartio-rpc:<fdid> for one a process of a SmartIO cluster\nserves (examples/serve.ts --sisci).\n"
    : "";
  return `Usage: ${usageLine(c)}\n\n${c.description}\n${device}\nOptions:\n${rows.map(([l, h]) => `  ${l.padEnd(width)}${h}`).join("\n")}\n`;
}

/** Parse `argv` (after the command name) for `c` into a Context; UsageError when it does not fit. */
export function parseCommand(c: Command, argv: readonly string[]): Context | "help" {
  if (c.passThrough) {
    if (argv.includes("-h") || argv.includes("--help")) return "help";
    const device = argv[0] ?? "";
    if (device === "" || device.startsWith("-")) throw new UsageError("the controller comes first: give its PCI address (05:00.0), /dev/disnvmN, smartio:<fdid> or nvme+tcp://HOST:PORT/SUBNQN");
    return { device, values: {}, positionals: [], argv: argv.slice(1), output: "normal", human: false, int: () => undefined, open: () => Promise.reject(new UsageError("a pass-through command opens the controller itself")) };
  }
  const options = { ...c.options, ...HELP_OPTION };
  const config = Object.fromEntries(Object.entries(options).map(([name, o]) => [name, o.short ? { type: o.type, short: o.short } : { type: o.type }]));
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: config, strict: true, allowPositionals: true });
  } catch (e) {
    // node:util's messages end with a hint for `--` that does not apply here: keep the first sentence.
    throw new UsageError((e as Error).message.split(". To specify")[0]!.replace(/^Unknown option/, "unknown option"));
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  if (values.help) return "help";
  const positionals = [...parsed.positionals];
  let device = "";
  if (c.optionalDevice && positionals.length > 0) device = positionals.shift()!;
  if (c.device) {
    device = positionals.shift() ?? "";
    if (device === "") throw new UsageError("the controller is missing: give its PCI address (05:00.0), /dev/disnvmN, smartio:<fdid> or nvme+tcp://HOST:PORT/SUBNQN");
    if (device.startsWith("-")) throw new UsageError(`"${device}" is not a controller`);
  }
  if (c.positionals) {
    const p = positionals[0];
    if (p === undefined) throw new UsageError(`<${c.positionals.name}> is missing: ${c.positionals.values.join(" or ")}`);
    if (!c.positionals.values.includes(p)) throw new UsageError(`${p}: choose ${c.positionals.values.join(" or ")}`);
  }
  if (positionals.length > (c.positionals ? 1 : 0)) throw new UsageError(`unexpected argument "${positionals[c.positionals ? 1 : 0]}"`);

  const fmt = values["output-format"];
  if (fmt !== undefined && fmt !== "normal" && fmt !== "json") throw new UsageError(`--output-format=${String(fmt)}: choose normal or json`);
  const output = values["raw-binary"] ? "binary" : values.json || fmt === "json" ? "json" : "normal";
  if (values["raw-binary"] && (values.json || fmt === "json")) throw new UsageError("--raw-binary and JSON output exclude each other");

  const int = (name: string, max?: number) => parseInteger(name, values[name], max);
  return {
    device,
    values,
    positionals,
    argv: [],
    output,
    human: values["human-readable"] === true,
    int,
    async open(opts: ControllerOptions = {}) {
      const timeoutMs = "timeout" in c.options && c.name !== "format" ? int("timeout") : undefined;
      if (timeoutMs === 0) throw new UsageError("--timeout=0: a command needs some time");
      const { openController } = await import("./open.ts");
      return openController({ ctrl: device, backend: values.backend ?? "auto", force: values["force-open"] === true }, { ...(timeoutMs ? { timeoutMs } : {}), ...opts });
    },
  };
}

/** The first line of an error, as the one line a failure prints. */
export function errorLine(command: string, e: unknown): string {
  if (e instanceof UsageError) return `libnvm ${command}: ${e.message.split("\n")[0]} (libnvm ${command} --help)`;
  const err = e instanceof Error ? e : new Error(String(e));
  return `libnvm ${command}: ${err.name}: ${err.message.split("\n")[0]}`;
}
