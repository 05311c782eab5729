/**
 * What the `libnvm` command and the example programs share: integer and size options, JSON with
 * 64-bit values, letting signals through during long loops, and the end-of-transfer summary. A
 * usage error is a UsageError (exit 2). Nothing here loads the driver: `libnvm --help` stays quick.
 */

/** A command line that cannot be run as given: exit status 2, one line on stderr. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

export const BACKENDS = ["auto", "sysfs", "vfio", "disnvm", "smartio"] as const;

/**
 * A non-negative integer option, decimal or 0x hex as nvme-cli takes them: undefined when absent,
 * UsageError when malformed or above `max`.
 */
export function parseInteger(name: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== "string" || !/^(0x[0-9a-f]+|\d+)$/i.test(v) || !Number.isSafeInteger(n)) {
    throw new UsageError(`--${name}: "${String(v)}" is not a non-negative integer`);
  }
  if (n > max) throw new UsageError(`--${name}=${v}: at most ${max}`);
  return n;
}

const SIZE_UNITS: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** A byte count with an optional binary unit: "4096", "4k", "128KiB", "1m", "2G". */
export function parseSize(name: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([kmgt])?(i?b)?$/i.exec(String(v).trim());
  if (typeof v !== "string" || !m) throw new UsageError(`--${name}=${String(v)}: expected a size like 4096, 4k, 128KiB or 1M`);
  const n = Number(m[1]) * SIZE_UNITS[(m[2] ?? "").toLowerCase()]!;
  if (!Number.isSafeInteger(n)) throw new UsageError(`--${name}=${v} is too large`);
  return n;
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

/** What a block transfer reports at its end. */
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
 * The end-of-transfer summary of `blocks` × `lbaSize` bytes: with `json` one JSON object on stdout
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
