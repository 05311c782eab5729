/**
 * Plain-text output in the layouts nvme-cli users know: "name : value" lines with nvme-cli's field
 * names and number bases, and with -H the bit fields decoded under each line (decode.ts).
 */
import type { IdentifyController, IdentifyNamespace } from "../lib/spec/identify.ts";
import type { ErrorLogEntry, FirmwareSlotLog, SmartLog } from "../lib/spec/log.ts";
import { statusName } from "../lib/spec/status.ts";
import { criticalWarningLines, ctrlFieldLines, nsFieldLines } from "./decode.ts";
import { firmwareChars, firmwareU64, hex, rawString, uuidString } from "./nvme-cli.ts";
import { siBytes } from "./units.ts";

/** A power value with its scale (bits 7:6 of the byte after it): 0 not reported, 1 in 0.0001 W, 2 in 0.01 W. */
function power(value: number, scale: number): string {
  if (scale === 1) return `${Math.floor(value / 10000)}.${String(value % 10000).padStart(4, "0")}W`;
  if (scale === 2) return `${Math.floor(value / 100)}.${String(value % 100).padStart(2, "0")}W`;
  return "-";
}

/** Active Power Workload (APW), byte 22 bits 2:0 of a power state descriptor. */
function workload(apw: number): string {
  return ["-", "Extended idle period with a burst of random writes", "Heavy sequential writes"][apw] ?? "Reserved";
}

function powerStateLines(raw: Uint8Array, id: IdentifyController): string[] {
  const out: string[] = [];
  for (let i = 0; i < Math.min(id.npss + 1, 32); i++) {
    const o = 2048 + 32 * i;
    const b = (k: number) => raw[o + k] ?? 0;
    const w = (k: number) => b(k) | (b(k + 1) << 8);
    const d = (k: number) => (w(k) | (w(k + 2) << 16)) >>> 0;
    const flags = b(3);
    // MXPS (flags bit 0): MP in 0.0001 W rather than 0.01 W.
    const mp = flags & 1 ? power(w(0), 1) : power(w(0), 2);
    out.push(
      `ps ${String(i).padStart(6)} : mp:${mp} ${flags & 2 ? "non-" : ""}operational enlat:${d(4)} exlat:${d(8)} rrt:${b(12)} rrl:${b(13)}`,
      `            rwt:${b(14)} rwl:${b(15)} idle_power:${power(w(16), b(18) >>> 6)} active_power:${power(w(20), b(22) >>> 6)}`,
      `            active_power_workload:${workload(b(22) & 7)}`,
    );
  }
  return out;
}

/** `nvme id-ctrl`, and with `human` `-H`. */
export function idCtrlText(raw: Uint8Array, id: IdentifyController, human: boolean): string {
  const lines = ["NVME Identify Controller:"];
  // [name, shown value, the raw number -H decodes]
  const rows: [string, string, number?][] = [
    ["vid", hex(id.vid)],
    ["ssvid", hex(id.ssvid)],
    ["sn", rawString(raw, 4, 20)],
    ["mn", rawString(raw, 24, 40)],
    ["fr", rawString(raw, 64, 8)],
    ["rab", String(id.rab)],
    ["ieee", id.ieee.toString(16).padStart(6, "0")],
    ["cmic", hex(id.cmic), id.cmic],
    ["mdts", String(id.mdts)],
    ["cntlid", hex(id.cntlid)],
    ["ver", hex(id.ver)],
    ["rtd3r", hex(id.rtd3r)],
    ["rtd3e", hex(id.rtd3e)],
    ["oaes", hex(id.oaes), id.oaes],
    ["ctratt", hex(id.ctratt), id.ctratt],
    ["rrls", hex(id.rrls)],
    ["cntrltype", String(id.cntrltype), id.cntrltype],
    ["fguid", uuidString(id.fguid)],
    ["crdt1", String(id.crdt1)],
    ["crdt2", String(id.crdt2)],
    ["crdt3", String(id.crdt3)],
    ["nvmsr", String(id.nvmsr), id.nvmsr],
    ["vwci", String(id.vwci), id.vwci],
    ["mec", String(id.mec), id.mec],
    ["oacs", hex(id.oacs), id.oacs],
    ["acl", String(id.acl)],
    ["aerl", String(id.aerl)],
    ["frmw", hex(id.frmw), id.frmw],
    ["lpa", hex(id.lpa), id.lpa],
    ["elpe", String(id.elpe), id.elpe],
    ["npss", String(id.npss), id.npss],
    ["avscc", hex(id.avscc), id.avscc],
    ["apsta", hex(id.apsta), id.apsta],
    ["wctemp", String(id.wctemp), id.wctemp],
    ["cctemp", String(id.cctemp), id.cctemp],
    ["mtfa", String(id.mtfa)],
    ["hmpre", String(id.hmpre)],
    ["hmmin", String(id.hmmin)],
    ["tnvmcap", id.tnvmcap.toString()],
    ["unvmcap", id.unvmcap.toString()],
    ["rpmbs", hex(id.rpmbs)],
    ["edstt", String(id.edstt)],
    ["dsto", String(id.dsto)],
    ["fwug", String(id.fwug)],
    ["kas", String(id.kas)],
    ["hctma", hex(id.hctma), id.hctma],
    ["mntmt", String(id.mntmt), id.mntmt],
    ["mxtmt", String(id.mxtmt), id.mxtmt],
    ["sanicap", hex(id.sanicap), id.sanicap],
    ["hmminds", String(id.hmminds)],
    ["hmmaxd", String(id.hmmaxd)],
    ["nsetidmax", String(id.nsetidmax)],
    ["endgidmax", String(id.endgidmax)],
    ["anatt", String(id.anatt)],
    ["anacap", String(id.anacap), id.anacap],
    ["anagrpmax", String(id.anagrpmax)],
    ["nanagrpid", String(id.nanagrpid)],
    ["pels", String(id.pels)],
    ["domainid", String(id.domainid)],
    ["megcap", id.megcap.toString()],
    ["sqes", hex(id.sqes), id.sqes],
    ["cqes", hex(id.cqes), id.cqes],
    ["maxcmd", String(id.maxcmd)],
    ["nn", String(id.nn)],
    ["oncs", hex(id.oncs), id.oncs],
    ["fuses", hex(id.fuses), id.fuses],
    ["fna", hex(id.fna), id.fna],
    ["vwc", hex(id.vwc), id.vwc],
    ["awun", String(id.awun)],
    ["awupf", String(id.awupf)],
    ["icsvscc", String(id.nvscc), id.nvscc],
    ["nwpc", String(id.nwpc), id.nwpc],
    ["acwu", String(id.acwu)],
    ["ocfs", hex(id.ocfs), id.ocfs],
    ["sgls", hex(id.sgls), id.sgls],
    ["mnan", String(id.mnan)],
    ["maxdna", id.maxdna.toString()],
    ["maxcna", String(id.maxcna)],
    ["subnqn", rawString(raw, 768, 256)],
    ["ioccsz", String(id.ioccsz)],
    ["iorcsz", String(id.iorcsz)],
    ["icdoff", String(id.icdoff)],
    ["fcatt", hex(id.ctrattr), id.ctrattr],
    ["msdbd", String(id.msdbd)],
    ["ofcs", String(id.ofcs), id.ofcs],
  ];
  for (const [name, shown, value] of rows) {
    lines.push(`${name.padEnd(9)} : ${shown}`);
    if (human && value !== undefined) lines.push(...ctrlFieldLines(name, value));
  }
  lines.push(...powerStateLines(raw, id));
  return lines.join("\n") + "\n";
}

const RELATIVE_PERFORMANCE = ["Best", "Better", "Good", "Degraded"];

/** `nvme id-ns`, and with `human` `-H`. */
export function idNsText(raw: Uint8Array, ns: IdentifyNamespace, nsid: number, human: boolean): string {
  const lines = [`NVME Identify Namespace ${nsid}:`];
  const rows: [string, string, number?][] = [
    ["nsze", hex(ns.nsze)],
    ["ncap", hex(ns.ncap)],
    ["nuse", hex(ns.nuse)],
    ["nsfeat", hex(ns.nsfeat), ns.nsfeat],
    ["nlbaf", String(ns.nlbaf)],
    ["flbas", hex(ns.flbas), ns.flbas],
    ["mc", hex(ns.mc), ns.mc],
    ["dpc", hex(ns.dpc), ns.dpc],
    ["dps", hex(ns.dps), ns.dps],
    ["nmic", hex(ns.nmic), ns.nmic],
    ["rescap", hex(ns.rescap), ns.rescap],
    ["fpi", hex(ns.fpi), ns.fpi],
    ["dlfeat", String(ns.dlfeat), ns.dlfeat],
    ["nawun", String(ns.nawun)],
    ["nawupf", String(ns.nawupf)],
    ["nacwu", String(ns.nacwu)],
    ["nabsn", String(ns.nabsn)],
    ["nabo", String(ns.nabo)],
    ["nabspf", String(ns.nabspf)],
    ["noiob", String(ns.noiob)],
    ["nvmcap", ns.nvmcap.toString()],
    ...((ns.nsfeat & 0x10) !== 0
      ? ([
          ["npwg", String(ns.npwg)],
          ["npwa", String(ns.npwa)],
          ["npdg", String(ns.npdg)],
          ["npda", String(ns.npda)],
          ["nows", String(ns.nows)],
        ] as [string, string][])
      : []),
    ["mssrl", String(ns.mssrl)],
    ["mcl", String(ns.mcl)],
    ["msrc", String(ns.msrc)],
    ["nulbaf", String(ns.nulbaf)],
    ["anagrpid", String(ns.anagrpid)],
    ["nsattr", String(ns.nsattr)],
    ["nvmsetid", String(ns.nvmsetid)],
    ["endgid", String(ns.endgid)],
    ["nguid", ns.nguid],
    ["eui64", ns.eui64],
  ];
  for (const [name, shown, value] of rows) {
    lines.push(`${name.padEnd(8)}: ${shown}`);
    if (human && value !== undefined) lines.push(...nsFieldLines(name, value));
  }
  ns.lbaf.forEach((_, i) => {
    const ms = (raw[128 + 4 * i] ?? 0) | ((raw[129 + 4 * i] ?? 0) << 8);
    const ds = raw[130 + 4 * i] ?? 0;
    const rp = raw[131 + 4 * i] ?? 0;
    const inUse = ns.isActive && i === ns.formatIndex ? " (in use)" : "";
    if (human) {
      lines.push(
        `LBA Format ${String(i).padStart(2)} : Metadata Size: ${String(ms).padEnd(3)} bytes - Data Size: ${2 ** ds} bytes - ` +
          `Relative Performance: ${hex(rp)} ${RELATIVE_PERFORMANCE[rp & 3]}${inUse}`,
      );
    } else lines.push(`lbaf ${String(i).padStart(2)} : ms:${String(ms).padEnd(3)} lbads:${String(ds).padEnd(2)} rp:${hex(rp)}${inUse}`);
  });
  return lines.join("\n") + "\n";
}

/** `nvme smart-log`: the controller-wide log unless `nsid`. */
export function smartLogText(s: SmartLog, device: string, nsid: number, human: boolean): string {
  const row = (name: string, v: string) => `${name.padEnd(40)}: ${v}`;
  const lines = [`Smart Log for NVME device:${device} namespace-id:${nsid.toString(16)}`, row("critical_warning", hex(s.criticalWarning))];
  if (human) lines.push(...criticalWarningLines(s.criticalWarning));
  lines.push(
    row("temperature", `${s.compositeTemperatureCelsius}°C (${s.compositeTemperature} Kelvin)`),
    row("available_spare", `${s.availableSpare}%`),
    row("available_spare_threshold", `${s.availableSpareThreshold}%`),
    row("percentage_used", `${s.percentageUsed}%`),
    row("endurance group critical warning summary", hex(s.enduranceGroupCriticalWarning)),
    // A data unit is 1000 blocks of 512 bytes.
    row("Data Units Read", `${s.dataUnitsRead} (${siBytes(s.dataUnitsRead * 512_000n)})`),
    row("Data Units Written", `${s.dataUnitsWritten} (${siBytes(s.dataUnitsWritten * 512_000n)})`),
    row("host_read_commands", String(s.hostReadCommands)),
    row("host_write_commands", String(s.hostWriteCommands)),
    row("controller_busy_time", String(s.controllerBusyTime)),
    row("power_cycles", String(s.powerCycles)),
    row("power_on_hours", String(s.powerOnHours)),
    row("unsafe_shutdowns", String(s.unsafeShutdowns)),
    row("media_errors", String(s.mediaErrors)),
    row("num_err_log_entries", String(s.numErrLogEntries)),
    row("Warning Temperature Time", String(s.warningTempTime)),
    row("Critical Composite Temperature Time", String(s.criticalCompTime)),
  );
  s.temperatureSensors.forEach((k, i) => {
    if (k !== null) lines.push(row(`Temperature Sensor ${i + 1}`, `${k - 273}°C (${k} Kelvin)`));
  });
  lines.push(
    row("Thermal Management T1 Trans Count", String(s.tmt1TransitionCount)),
    row("Thermal Management T2 Trans Count", String(s.tmt2TransitionCount)),
    row("Thermal Management T1 Total Time", String(s.tmt1TotalTime)),
    row("Thermal Management T2 Total Time", String(s.tmt2TotalTime)),
  );
  return lines.join("\n") + "\n";
}

const TRANSPORT_TYPES: Record<number, string> = {
  0: "The transport type is not indicated or the error is not transport related",
  1: "RDMA Transport",
  2: "Fibre Channel Transport",
  3: "TCP Transport",
  254: "Intra-host Transport (loopback)",
};

/** `nvme error-log`: every entry, unused ones included. */
export function errorLogText(entries: readonly ErrorLogEntry[], device: string): string {
  const lines = [`Error Log Entries for device:${device} entries:${entries.length}`, "................."];
  entries.forEach((e, i) => {
    lines.push(
      ` Entry[${String(i).padStart(2)}]`,
      ".................",
      `error_count     : ${e.errorCount}`,
      `sqid            : ${e.sqid}`,
      `cmdid           : ${hex(e.cid)}`,
      `status_field    : ${hex(e.status)} (${statusName(e.statusFields.sct, e.statusFields.sc)})`,
      `phase_tag       : ${hex(e.phaseTag)}`,
      `parm_err_loc    : ${hex(e.parameterErrorLocation)}`,
      `lba             : ${hex(e.lba)}`,
      `nsid            : ${hex(e.nsid)}`,
      `vs              : ${hex(e.vsia)}`,
      `trtype          : ${TRANSPORT_TYPES[e.trtype] ?? "Reserved"}`,
      `cs              : ${hex(e.csi)}`,
      `trtype_spec_info: ${hex(e.ttsi)}`,
      ".................",
    );
  });
  return lines.join("\n") + "\n";
}

/** `nvme fw-log`. */
export function fwLogText(raw: Uint8Array, fw: FirmwareSlotLog, device: string): string {
  const lines = [`Firmware Log for device:${device}`, `afi  : ${hex(fw.afi)}`];
  for (let slot = 1; slot <= 7; slot++) {
    if ((raw[8 * slot] ?? 0) !== 0) lines.push(`frs${slot} : 0x${firmwareU64(raw, 8 * slot).toString(16).padStart(16, "0")} (${firmwareChars(raw, 8 * slot)})`);
  }
  return lines.join("\n") + "\n";
}

/** `nvme list-ns`: "[   i]:0xNSID". */
export function listNsText(nsids: readonly number[]): string {
  return nsids.map((n, i) => `[${String(i).padStart(4)}]:${hex(n)}\n`).join("");
}
