/**
 * What a benchmark ran on, printed with every result: figures from a 2-core shared machine and
 * from a quiet one are not comparable, and neither is a run while other guests were busy.
 */
import { readFileSync } from "node:fs";
import { cpus, loadavg, release } from "node:os";

export interface MachineInfo {
  date: string;
  host: string;
  nproc: number;
  cpu: string;
  kernel: string;
  bun: string;
  /** 1, 5 and 15 minute load averages when the run started (and ended, when known). */
  loadStart: number[];
  loadEnd?: number[];
  qemu?: string;
  /** Inside the QEMU guest: the guest kernel; `kernel` is then the guest's. */
  guest?: boolean;
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (m) return m[1]!.trim();
  } catch {
    // fall through
  }
  return cpus()[0]?.model ?? "unknown";
}

export function machineInfo(extra: Partial<MachineInfo> = {}): MachineInfo {
  let host = "unknown";
  try {
    host = readFileSync("/proc/sys/kernel/hostname", "utf8").trim();
  } catch {
    // keep unknown
  }
  return {
    date: new Date().toISOString(),
    host,
    nproc: cpus().length,
    cpu: cpuModel(),
    kernel: release(),
    bun: Bun.version,
    loadStart: loadavg().map((x) => Number(x.toFixed(2))),
    ...extra,
  };
}

export function finishMachineInfo(m: MachineInfo): MachineInfo {
  m.loadEnd = loadavg().map((x) => Number(x.toFixed(2)));
  return m;
}

export function describeMachine(m: MachineInfo): string {
  const lines = [
    `date    ${m.date}`,
    `machine ${m.host}: ${m.nproc} CPUs, ${m.cpu}; kernel ${m.kernel}; bun ${m.bun}${m.qemu ? `; ${m.qemu}` : ""}${m.guest ? " (QEMU TCG guest)" : ""}`,
    `load    ${m.loadStart.join(" ")} at start${m.loadEnd ? `, ${m.loadEnd.join(" ")} at end` : ""} (1/5/15 min; other work on the machine skews every figure)`,
  ];
  return lines.join("\n");
}

/** `qemu-system-x86_64 --version`, first line; undefined when QEMU is not installed. */
export function qemuVersion(): string | undefined {
  try {
    const r = Bun.spawnSync(["qemu-system-x86_64", "--version"], { stdout: "pipe", stderr: "ignore" });
    return r.exitCode === 0 ? r.stdout.toString().split("\n")[0]!.trim() : undefined;
  } catch {
    return undefined;
  }
}

/** A fixed-width text table. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(cells[0]!), widths.map((w) => "-".repeat(w)).join("  "), ...cells.slice(1).map(line)].join("\n");
}
