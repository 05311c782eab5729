/**
 * What the disnvm guest suites share: the controller as the suite's prelude bound it to the module,
 * its node, the module's pinned-page counter, and fixtures run with fewer privileges than root.
 * Every suite fails (never skips) when the controller is not bound to disnvm.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { findPciDevice } from "../../lib/pci.ts";
import { ctrlAddress, REPO } from "../hw/common.ts";

export const BDF = ctrlAddress();
export const SYS = `/sys/bus/pci/devices/${BDF}`;

/** /dev/disnvmN of the test controller; throws when the prelude did not bind it to disnvm. */
export function disnvmNode(): string {
  const driver = findPciDevice(BDF).driver;
  if (driver !== "disnvm") throw new Error(`${BDF} is bound to ${driver ?? "no driver"}, not disnvm: the suite's prelude (test/vm/hw.ts) binds it`);
  const name = readdirSync(join(SYS, "misc")).find((n) => n.startsWith("disnvm"));
  if (!name || !existsSync(`/dev/${name}`)) throw new Error(`${BDF} is bound to disnvm but has no /dev/disnvmN`);
  return `/dev/${name}`;
}

/** 4 KiB pages the module has pinned on the controller right now. */
export function pinnedPages(): number {
  return Number(readFileSync(join(SYS, "disnvm_pinned_pages"), "utf8").trim());
}

/** The IOMMU group's domain type of the controller ("DMA-FQ", "identity", ...), or undefined without one. */
export function iommuDomainType(): string | undefined {
  try {
    return readFileSync(join(SYS, "iommu_group", "type"), "utf8").trim();
  } catch {
    return undefined;
  }
}

export const CAP_SYS_RAWIO = 17;
export const CAP_IPC_LOCK = 14;

/**
 * Run test/hw-disnvm/fixtures/user.ts <node> <mode> as root without the capabilities in `drop`
 * (setpriv removes them from the inheritable and bounding sets, so the exec'd Bun never gets them)
 * and, when `memlock` is given, with RLIMIT_MEMLOCK set to that many bytes. Returns its JSON line.
 */
export function runUser(node: string, mode: string, opts: { drop?: string[]; memlock?: number } = {}): Record<string, any> {
  const drop = opts.drop ?? [];
  const caps = drop.map((c) => `-${c}`).join(",");
  const cmd = [
    ...(drop.length ? ["setpriv", `--inh-caps=${caps}`, `--bounding-set=${caps}`, "--"] : []),
    ...(opts.memlock !== undefined ? ["prlimit", `--memlock=${opts.memlock}:${opts.memlock}`] : []),
    "bun",
    join(import.meta.dir, "fixtures", "user.ts"),
    node,
    mode,
  ];
  const r = Bun.spawnSync(cmd, { cwd: REPO, stdout: "pipe", stderr: "pipe", timeout: 110_000 });
  const out = r.stdout.toString().trim();
  const line = out.split("\n").at(-1) ?? "";
  if (r.exitCode !== 0 || !line.startsWith("{")) {
    throw new Error(`${cmd.join(" ")} exited ${r.exitCode}: stdout ${JSON.stringify(out)}, stderr ${JSON.stringify(r.stderr.toString().trim().slice(-2000))}`);
  }
  return JSON.parse(line);
}

/** Whether capability number `cap` is in a CapEff hex mask. */
export function hasCap(capEff: string, cap: number): boolean {
  return (BigInt(`0x${capEff}`) & (1n << BigInt(cap))) !== 0n;
}

/**
 * At least `n` free 2 MiB hugepages, for the library's contiguous queues (it takes them from
 * hugepages when no IOMMU merges pages); reserves what is missing, whatever the guest reserved at
 * boot, and returns how to give them back (afterAll), so the suite leaves nr_hugepages as found.
 */
export function ensureHugepages(n: number): () => void {
  const nr = "/proc/sys/vm/nr_hugepages";
  const free = Number(readFileSync("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "utf8"));
  if (free >= n) return () => {};
  const before = readFileSync(nr, "utf8").trim();
  writeFileSync(nr, String(Number(before) + n - free));
  return () => writeFileSync(nr, before);
}
