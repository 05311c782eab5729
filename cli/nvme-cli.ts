/**
 * The structures the command line prints, in nvme-cli's shapes: JSON objects whose keys, order and
 * value types are those of `nvme <command> -o json` (nvme-cli 2.3, Debian 12), so scripts written
 * for nvme-cli read ours unchanged, and the plain-text layouts nvme-cli users know.
 *
 * nvme-cli prints some fields as the raw bytes of the structure where libnvm's parsers decode them
 * (SN, MN and FR untrimmed; power state and LBA format bytes whole, reserved bits included), so
 * those come from the raw 4096-byte structure; everything else from the library's parsers.
 * Types: integers up to 32 bits are numbers; 64-bit ones bigints (exact numbers in the output);
 * 128-bit ones decimal strings; identifiers strings.
 */
import type { IdentifyController, IdentifyNamespace } from "../lib/spec/identify.ts";
import type { ErrorLogEntry, FirmwareSlotLog, SmartLog } from "../lib/spec/log.ts";
import type { JsonValue } from "./json.ts";

type JsonObject = { [key: string]: JsonValue };

/** An ASCII field as nvme-cli prints it ("%-.*s"): every byte up to the first NUL, padding kept. */
export function rawString(raw: Uint8Array, off: number, len: number): string {
  const field = raw.subarray(off, off + len);
  const nul = field.indexOf(0);
  return String.fromCharCode(...(nul < 0 ? field : field.subarray(0, nul)));
}

/** 32 hex digits as a UUID, 8-4-4-4-12 (FGUID). */
export function uuidString(hex: string): string {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** C's "%#x": "0" for zero, else 0x and lower-case hex. */
export function hex(v: number | bigint): string {
  return v === 0 || v === 0n ? "0" : `0x${v.toString(16)}`;
}

const u8 = (raw: Uint8Array, off: number) => raw[off] ?? 0;
const u16 = (raw: Uint8Array, off: number) => u8(raw, off) | (u8(raw, off + 1) << 8);
const u32 = (raw: Uint8Array, off: number) => (u16(raw, off) | (u16(raw, off + 2) << 16)) >>> 0;

/** One power state descriptor as nvme-cli reads it: whole bytes, the scales from bits 7:6. */
function powerState(raw: Uint8Array, i: number): JsonObject {
  const o = 2048 + 32 * i;
  return {
    max_power: u16(raw, o),
    flags: u8(raw, o + 3),
    entry_lat: u32(raw, o + 4),
    exit_lat: u32(raw, o + 8),
    read_tput: u8(raw, o + 12),
    read_lat: u8(raw, o + 13),
    write_tput: u8(raw, o + 14),
    write_lat: u8(raw, o + 15),
    idle_power: u16(raw, o + 16),
    idle_scale: (u8(raw, o + 18) >>> 6) & 3,
    active_power: u16(raw, o + 20),
    active_power_work: u8(raw, o + 22) & 7,
    active_scale: (u8(raw, o + 22) >>> 6) & 3,
  };
}

/** `nvme id-ctrl -o json`. `raw` is the Identify Controller structure `id` was parsed from. */
export function idCtrlJson(raw: Uint8Array, id: IdentifyController): JsonObject {
  const subnqn = rawString(raw, 768, 256);
  return {
    vid: id.vid,
    ssvid: id.ssvid,
    sn: rawString(raw, 4, 20),
    mn: rawString(raw, 24, 40),
    fr: rawString(raw, 64, 8),
    rab: id.rab,
    ieee: id.ieee,
    cmic: id.cmic,
    mdts: id.mdts,
    cntlid: id.cntlid,
    ver: id.ver,
    rtd3r: id.rtd3r,
    rtd3e: id.rtd3e,
    oaes: id.oaes,
    ctratt: id.ctratt,
    rrls: id.rrls,
    cntrltype: id.cntrltype,
    fguid: uuidString(id.fguid),
    crdt1: id.crdt1,
    crdt2: id.crdt2,
    crdt3: id.crdt3,
    nvmsr: id.nvmsr,
    vwci: id.vwci,
    mec: id.mec,
    oacs: id.oacs,
    acl: id.acl,
    aerl: id.aerl,
    frmw: id.frmw,
    lpa: id.lpa,
    elpe: id.elpe,
    npss: id.npss,
    avscc: id.avscc,
    apsta: id.apsta,
    wctemp: id.wctemp,
    cctemp: id.cctemp,
    mtfa: id.mtfa,
    hmpre: id.hmpre,
    hmmin: id.hmmin,
    tnvmcap: id.tnvmcap.toString(),
    unvmcap: id.unvmcap.toString(),
    rpmbs: id.rpmbs,
    edstt: id.edstt,
    dsto: id.dsto,
    fwug: id.fwug,
    kas: id.kas,
    hctma: id.hctma,
    mntmt: id.mntmt,
    mxtmt: id.mxtmt,
    sanicap: id.sanicap,
    hmminds: id.hmminds,
    hmmaxd: id.hmmaxd,
    nsetidmax: id.nsetidmax,
    endgidmax: id.endgidmax,
    anatt: id.anatt,
    anacap: id.anacap,
    anagrpmax: id.anagrpmax,
    nanagrpid: id.nanagrpid,
    pels: id.pels,
    domainid: id.domainid,
    megcap: id.megcap.toString(),
    sqes: id.sqes,
    cqes: id.cqes,
    maxcmd: id.maxcmd,
    nn: id.nn,
    oncs: id.oncs,
    fuses: id.fuses,
    fna: id.fna,
    vwc: id.vwc,
    awun: id.awun,
    awupf: id.awupf,
    icsvscc: id.nvscc,
    nwpc: id.nwpc,
    acwu: id.acwu,
    ocfs: id.ocfs,
    sgls: id.sgls,
    mnan: id.mnan,
    maxdna: id.maxdna.toString(),
    maxcna: id.maxcna,
    // nvme-cli leaves SUBNQN out when the controller reports none.
    ...(subnqn === "" ? {} : { subnqn }),
    ioccsz: id.ioccsz,
    iorcsz: id.iorcsz,
    icdoff: id.icdoff,
    fcatt: id.ctrattr,
    msdbd: id.msdbd,
    ofcs: id.ofcs,
    // NPSS is 0's based; nvme-cli prints NPSS + 1 descriptors.
    psds: Array.from({ length: Math.min(id.npss + 1, 32) }, (_, i) => powerState(raw, i)),
  };
}

/** `nvme id-ns -o json`. `raw` is the Identify Namespace structure `ns` was parsed from. */
export function idNsJson(raw: Uint8Array, ns: IdentifyNamespace): JsonObject {
  return {
    nsze: ns.nsze,
    ncap: ns.ncap,
    nuse: ns.nuse,
    nsfeat: ns.nsfeat,
    nlbaf: ns.nlbaf,
    flbas: ns.flbas,
    mc: ns.mc,
    dpc: ns.dpc,
    dps: ns.dps,
    nmic: ns.nmic,
    rescap: ns.rescap,
    fpi: ns.fpi,
    dlfeat: ns.dlfeat,
    nawun: ns.nawun,
    nawupf: ns.nawupf,
    nacwu: ns.nacwu,
    nabsn: ns.nabsn,
    nabo: ns.nabo,
    nabspf: ns.nabspf,
    noiob: ns.noiob,
    nvmcap: ns.nvmcap.toString(),
    nsattr: ns.nsattr,
    nvmsetid: ns.nvmsetid,
    // NSFEAT bit 4 (OPTPERF): NPWG..NOWS are defined only when it is set, and nvme-cli prints them only then.
    ...((ns.nsfeat & 0x10) !== 0 ? { npwg: ns.npwg, npwa: ns.npwa, npdg: ns.npdg, npda: ns.npda, nows: ns.nows } : {}),
    mssrl: ns.mssrl,
    mcl: ns.mcl,
    msrc: ns.msrc,
    nulbaf: ns.nulbaf,
    anagrpid: ns.anagrpid,
    endgid: ns.endgid,
    eui64: ns.eui64,
    nguid: ns.nguid,
    // Whole bytes of each LBAF, as nvme-cli prints them: MS 15:0, LBADS byte 2, RP byte 3.
    lbafs: ns.lbaf.map((_, i) => ({ ms: u16(raw, 128 + 4 * i), ds: u8(raw, 130 + 4 * i), rp: u8(raw, 131 + 4 * i) })),
  };
}

/** `nvme smart-log -o json`; with `human` (-H) critical_warning becomes an object of its bits. */
export function smartLogJson(s: SmartLog, human: boolean): JsonObject {
  const cw = s.criticalWarning;
  const sensors: JsonObject = {};
  s.temperatureSensors.forEach((k, i) => {
    if (k !== null) sensors[`temperature_sensor_${i + 1}`] = k;
  });
  return {
    critical_warning: human
      ? {
          value: cw,
          available_spare: cw & 1,
          temp_threshold: (cw >>> 1) & 1,
          reliability_degraded: (cw >>> 2) & 1,
          ro: (cw >>> 3) & 1,
          vmbu_failed: (cw >>> 4) & 1,
          pmr_ro: (cw >>> 5) & 1,
        }
      : cw,
    temperature: s.compositeTemperature,
    avail_spare: s.availableSpare,
    spare_thresh: s.availableSpareThreshold,
    percent_used: s.percentageUsed,
    endurance_grp_critical_warning_summary: s.enduranceGroupCriticalWarning,
    data_units_read: s.dataUnitsRead.toString(),
    data_units_written: s.dataUnitsWritten.toString(),
    host_read_commands: s.hostReadCommands.toString(),
    host_write_commands: s.hostWriteCommands.toString(),
    controller_busy_time: s.controllerBusyTime.toString(),
    power_cycles: s.powerCycles.toString(),
    power_on_hours: s.powerOnHours.toString(),
    unsafe_shutdowns: s.unsafeShutdowns.toString(),
    media_errors: s.mediaErrors.toString(),
    num_err_log_entries: s.numErrLogEntries.toString(),
    warning_temp_time: s.warningTempTime,
    critical_comp_time: s.criticalCompTime,
    ...sensors,
    thm_temp1_trans_count: s.tmt1TransitionCount,
    thm_temp2_trans_count: s.tmt2TransitionCount,
    thm_temp1_total_time: s.tmt1TotalTime,
    thm_temp2_total_time: s.tmt2TotalTime,
  };
}

/** `nvme error-log -o json`: every entry asked for, unused ones (error_count 0) included. */
export function errorLogJson(entries: readonly ErrorLogEntry[]): JsonObject {
  return {
    errors: entries.map((e) => ({
      error_count: e.errorCount,
      sqid: e.sqid,
      cmdid: e.cid,
      status_field: e.status,
      phase_tag: e.phaseTag,
      parm_error_location: e.parameterErrorLocation,
      lba: e.lba,
      nsid: e.nsid,
      vs: e.vsia,
      trtype: e.trtype,
      cs: e.csi,
      trtype_spec_info: e.ttsi,
    })),
  };
}

/** A firmware revision's 8 bytes as nvme-cli shows them: printable ASCII, anything else (spaces too) as '.'. */
export function firmwareChars(raw: Uint8Array, off: number): string {
  let s = "";
  for (let i = 0; i < 8; i++) {
    const c = u8(raw, off + i);
    s += c >= 0x21 && c <= 0x7e ? String.fromCharCode(c) : ".";
  }
  return s;
}

/** Bytes `off`..`off+7` as the little-endian u64 nvme-cli prints for a firmware slot. */
export function firmwareU64(raw: Uint8Array, off: number): bigint {
  return new DataView(raw.buffer, raw.byteOffset + off, 8).getBigUint64(0, true);
}

/**
 * `nvme fw-log -o json`: one object under the device's name (nvme-cli's kernel name, such as
 * "nvme0"; ours is the controller's address), slots whose first byte is not zero.
 */
export function fwLogJson(raw: Uint8Array, fw: FirmwareSlotLog, device: string): JsonObject {
  const slots: JsonObject = { "Active Firmware Slot (afi)": fw.afi };
  for (let slot = 1; slot <= 7; slot++) {
    if (u8(raw, 8 * slot) !== 0) slots[`Firmware Rev Slot ${slot}`] = `${firmwareU64(raw, 8 * slot)} (${firmwareChars(raw, 8 * slot)})`;
  }
  return { [device]: slots };
}

/** `nvme list-ns -o json`. */
export function listNsJson(nsids: readonly number[]): JsonObject {
  return { nsid_list: nsids.map((nsid) => ({ nsid })) };
}

/** One namespace as `nvme list -o json` shows it. */
export interface ListedNamespace {
  readonly nsid: number;
  /** Where the namespace is reached: nvme-cli's block device; ours the controller's address (or /dev/disnvmN). */
  readonly devicePath: string;
  readonly firmware: string;
  readonly model: string;
  readonly serial: string;
  readonly info: IdentifyNamespace;
}

/** One entry of `nvme list -o json`'s "Devices": sizes in bytes of the LBA data size in use. */
export function listDeviceJson(n: ListedNamespace): JsonObject {
  const lba = BigInt(n.info.lbaSize);
  return {
    NameSpace: n.nsid,
    DevicePath: n.devicePath,
    Firmware: n.firmware,
    ModelNumber: n.model,
    SerialNumber: n.serial,
    UsedBytes: n.info.nuse * lba,
    MaximumLBA: n.info.nsze,
    PhysicalSize: n.info.nsze * lba,
    SectorSize: n.info.lbaSize,
  };
}
