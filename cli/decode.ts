/**
 * `-H`: bit fields decoded under the field's line, as nvme-cli does: one line per field of the
 * register, "  [hi:lo] : value<TAB>meaning". Meanings from NVMe Base 2.0 and the NVM Command Set
 * 1.0 (Identify Controller, Identify Namespace, SMART / Health Information, Features).
 */
import { hex } from "./nvme-cli.ts";

/** A field of a bit-field value: bits hi:lo and what its value means. */
interface Bits {
  readonly hi: number;
  readonly lo: number;
  /** Meaning of the field's value: a flag's [set, clear] texts, or a function of the value. */
  readonly says: readonly [string, string] | ((v: number) => string);
}

const flag = (bit: number, set: string, clear: string): Bits => ({ hi: bit, lo: bit, says: [set, clear] });
const supported = (bit: number, what: string): Bits => flag(bit, `${what} Supported`, `${what} Not Supported`);
const field = (hi: number, lo: number, says: (v: number) => string): Bits => ({ hi, lo, says });

function decode(value: number, fields: readonly Bits[]): string[] {
  return fields.map((f) => {
    const width = f.hi - f.lo + 1;
    const v = Math.floor(value / 2 ** f.lo) % 2 ** width;
    const text = typeof f.says === "function" ? f.says(v) : v ? f.says[0] : f.says[1];
    return `  [${f.hi}:${f.lo}] : ${hex(v)}\t${text}`;
  });
}

const kelvin = (k: number) => `${k - 273}°C (${k} Kelvin)`;

/** Identify Controller fields, by nvme-cli's name for them. */
const CTRL: Record<string, readonly Bits[]> = {
  cmic: [
    supported(3, "ANA"),
    flag(2, "SR-IOV", "PCI"),
    flag(1, "Multi Controller", "Single Controller"),
    flag(0, "Multi Port", "Single Port"),
  ],
  oaes: [
    supported(31, "Discovery Log Change Notices"),
    supported(27, "Zone Descriptor Changed Notices"),
    supported(15, "Normal NVM Subsystem Shutdown Event"),
    supported(14, "Endurance Group Event Aggregate Log Page Change Notices"),
    supported(13, "LBA Status Information Notices"),
    supported(12, "Predictable Latency Event Aggregate Log Change Notices"),
    supported(11, "Asymmetric Namespace Access Change Notices"),
    supported(9, "Firmware Activation Notices"),
    supported(8, "Namespace Attribute Changed Notices"),
  ],
  ctratt: [
    supported(15, "Extended LBA Formats"),
    supported(14, "Delete NVM Set"),
    supported(13, "Delete Endurance Group"),
    supported(12, "Variable Capacity Management"),
    supported(11, "Fixed Capacity Management"),
    supported(10, "Multi Domain Subsystem"),
    supported(9, "UUID List"),
    supported(8, "SQ Associations"),
    supported(7, "Namespace Granularity"),
    supported(6, "Traffic Based Keep Alive"),
    supported(5, "Predictable Latency Mode"),
    supported(4, "Endurance Groups"),
    supported(3, "Read Recovery Levels"),
    supported(2, "NVM Sets"),
    supported(1, "Non-Operational Power State Permissive Mode"),
    supported(0, "128-bit Host Identifier"),
  ],
  cntrltype: [field(7, 2, () => "Reserved"), field(1, 0, (v) => ["Controller type not reported", "I/O Controller", "Discovery Controller", "Administrative Controller"][v]!)],
  nvmsr: [flag(1, "NVM subsystem part of an Enclosure", "NVM subsystem not part of an Enclosure"), flag(0, "NVM subsystem part of a Storage Device", "NVM subsystem not part of a Storage Device")],
  vwci: [flag(7, "VPD Write Cycles Remaining field is valid", "VPD Write Cycles Remaining field is not valid"), field(6, 0, () => "VPD Write Cycles Remaining")],
  mec: [supported(1, "Management Endpoint on a PCIe port"), supported(0, "Management Endpoint on an SMBus/I2C port")],
  oacs: [
    supported(10, "Command and Feature Lockdown"),
    supported(9, "Get LBA Status"),
    supported(8, "Doorbell Buffer Config"),
    supported(7, "Virtualization Management"),
    supported(6, "NVMe-MI Send and Receive"),
    supported(5, "Directives"),
    supported(4, "Device Self-test"),
    supported(3, "Namespace Management and Attachment"),
    supported(2, "Firmware Commit and Image Download"),
    supported(1, "Format NVM"),
    supported(0, "Security Send and Receive"),
  ],
  frmw: [
    supported(5, "Multiple Update Detection"),
    supported(4, "Firmware Activation Without Reset"),
    field(3, 1, (v) => `${v} Firmware Slots`),
    flag(0, "Firmware Slot 1 Read-Only", "Firmware Slot 1 Read/Write"),
  ],
  lpa: [
    supported(6, "Telemetry Log Data Area 4"),
    supported(5, "LID 0h, and scope in LID 5h, 12h, 13h"),
    supported(4, "Persistent Event Log"),
    supported(3, "Telemetry Host-Initiated and Controller-Initiated log pages"),
    supported(2, "Extended data for Get Log Page"),
    supported(1, "Commands Supported and Effects log page"),
    supported(0, "SMART / Health log page per namespace"),
  ],
  elpe: [field(7, 0, (v) => `${v + 1} Error Log Page Entries (ELPE, 0's based)`)],
  npss: [field(7, 0, (v) => `${v + 1} Power States (NPSS, 0's based)`)],
  avscc: [flag(0, "Admin Vendor Specific Commands use the standard format", "Admin Vendor Specific Commands use a vendor specific format")],
  apsta: [supported(0, "Autonomous Power State Transitions")],
  wctemp: [field(15, 0, (v) => `${kelvin(v)} Warning Composite Temperature Threshold (WCTEMP)`)],
  cctemp: [field(15, 0, (v) => `${kelvin(v)} Critical Composite Temperature Threshold (CCTEMP)`)],
  hctma: [supported(0, "Host Controlled Thermal Management")],
  mntmt: [field(15, 0, (v) => `${kelvin(v)} Minimum Thermal Management Temperature (MNTMT)`)],
  mxtmt: [field(15, 0, (v) => `${kelvin(v)} Maximum Thermal Management Temperature (MXTMT)`)],
  sanicap: [
    field(31, 30, (v) => ["Media modification after sanitize not defined", "Media not additionally modified after sanitize", "Media additionally modified after sanitize", "Reserved"][v]!),
    flag(29, "No-Deallocate After Sanitize not supported", "No-Deallocate After Sanitize supported"),
    supported(2, "Overwrite Sanitize Operation"),
    supported(1, "Block Erase Sanitize Operation"),
    supported(0, "Crypto Erase Sanitize Operation"),
  ],
  anacap: [
    supported(7, "Non-zero ANA Group ID"),
    flag(6, "ANA Group ID does not change", "ANA Group ID may change"),
    supported(4, "ANA Change state"),
    supported(3, "ANA Persistent Loss state"),
    supported(2, "ANA Inaccessible state"),
    supported(1, "ANA Non-Optimized state"),
    supported(0, "ANA Optimized state"),
  ],
  sqes: [field(7, 4, (v) => `Max SQ Entry Size (${2 ** v})`), field(3, 0, (v) => `Min SQ Entry Size (${2 ** v})`)],
  cqes: [field(7, 4, (v) => `Max CQ Entry Size (${2 ** v})`), field(3, 0, (v) => `Min CQ Entry Size (${2 ** v})`)],
  oncs: [
    supported(8, "Copy"),
    supported(7, "Verify"),
    supported(6, "Timestamp"),
    supported(5, "Reservations"),
    supported(4, "Save field in Set Features and Select field in Get Features"),
    supported(3, "Write Zeroes"),
    supported(2, "Dataset Management"),
    supported(1, "Write Uncorrectable"),
    supported(0, "Compare"),
  ],
  fuses: [supported(0, "Fused Compare and Write")],
  fna: [
    flag(3, "Format NVM with NSID FFFFFFFFh Not Supported", "Format NVM with NSID FFFFFFFFh Supported"),
    supported(2, "Cryptographic Erase as part of Secure Erase"),
    flag(1, "Cryptographic Erase applies to all namespaces", "Cryptographic Erase applies to a single namespace"),
    flag(0, "Format applies to all namespaces", "Format applies to a single namespace"),
  ],
  vwc: [
    field(2, 1, (v) => ["Support for NSID FFFFFFFFh in Flush not indicated", "Reserved", "Flush with NSID FFFFFFFFh Not Supported", "Flush with NSID FFFFFFFFh Supported"][v]!),
    flag(0, "Volatile Write Cache Present", "Volatile Write Cache Not Present"),
  ],
  icsvscc: [flag(0, "NVM Vendor Specific Commands use the standard format", "NVM Vendor Specific Commands use a vendor specific format")],
  nwpc: [supported(2, "Permanent Write Protect"), supported(1, "Write Protect Until Power Cycle"), supported(0, "No Write Protect and Write Protect namespace states")],
  ocfs: [supported(3, "Copy Format 3h"), supported(2, "Copy Format 2h"), supported(1, "Copy Format 1h"), supported(0, "Copy Format 0h")],
  sgls: [
    supported(21, "Transport SGL Data Block Descriptor"),
    supported(20, "Address as an offset"),
    supported(19, "MPTR holding an SGL descriptor"),
    supported(18, "SGL longer than the data"),
    supported(17, "Byte-aligned contiguous metadata buffer"),
    supported(16, "SGL Bit Bucket descriptor"),
    field(15, 8, (v) => `SGL Descriptor Threshold ${v}`),
    supported(2, "Keyed SGL Data Block descriptor"),
    field(1, 0, (v) => ["SGLs Not Supported", "SGLs Supported, no alignment required", "SGLs Supported, Dword alignment required", "Reserved"][v]!),
  ],
  fcatt: [flag(0, "Static Controller Model", "Dynamic Controller Model")],
  ofcs: [supported(0, "Disconnect command")],
};

/** Identify Namespace fields. */
const NS: Record<string, readonly Bits[]> = {
  nsfeat: [
    supported(4, "NPWG, NPWA, NPDG, NPDA and NOWS"),
    flag(3, "NGUID and EUI64 never reused", "NGUID and EUI64 may be reused"),
    supported(2, "Deallocated or Unwritten Logical Block error"),
    flag(1, "NAWUN, NAWUPF and NACWU are the namespace's own", "Namespace uses the controller's AWUN, AWUPF and ACWU"),
    supported(0, "Thin Provisioning"),
  ],
  flbas: [
    field(6, 5, () => "Most significant 2 bits of the LBA Format in use"),
    flag(4, "Metadata transferred at the end of the data LBA", "Metadata transferred in a separate contiguous buffer"),
    field(3, 0, () => "Least significant 4 bits of the LBA Format in use"),
  ],
  mc: [supported(1, "Metadata Pointer"), supported(0, "Metadata as part of an extended data LBA")],
  dpc: [
    supported(4, "Protection Information in the last 8 bytes of metadata"),
    supported(3, "Protection Information in the first 8 bytes of metadata"),
    supported(2, "Protection Information Type 3"),
    supported(1, "Protection Information Type 2"),
    supported(0, "Protection Information Type 1"),
  ],
  dps: [
    flag(3, "Protection Information in the first 8 bytes of metadata", "Protection Information in the last 8 bytes of metadata"),
    field(2, 0, (v) => (v === 0 ? "Protection Information Disabled" : v <= 3 ? `Protection Information Type ${v}` : "Reserved")),
  ],
  nmic: [flag(0, "Namespace may be attached to several controllers", "Namespace is private to one controller")],
  rescap: [
    flag(7, "Ignore Existing Key as in revision 1.3 and later", "Ignore Existing Key as in revision 1.2.1 and earlier"),
    supported(6, "Exclusive Access - All Registrants"),
    supported(5, "Write Exclusive - All Registrants"),
    supported(4, "Exclusive Access - Registrants Only"),
    supported(3, "Write Exclusive - Registrants Only"),
    supported(2, "Exclusive Access"),
    supported(1, "Write Exclusive"),
    supported(0, "Persist Through Power Loss"),
  ],
  fpi: [supported(7, "Format Progress Indicator"), field(6, 0, (v) => `${v}% of the namespace remains to be formatted`)],
  dlfeat: [
    flag(4, "Guard field of deallocated blocks is the CRC of the data", "Guard field of deallocated blocks is FFFFh"),
    supported(3, "Deallocate bit in Write Zeroes"),
    field(2, 0, (v) => ["Deallocated blocks read: not reported", "Deallocated blocks read as 00h", "Deallocated blocks read as FFh", "Reserved"][Math.min(v, 3)]!),
  ],
};

/** The -H lines under an Identify Controller field, or none when it is not decoded. */
export function ctrlFieldLines(name: string, value: number): string[] {
  const f = CTRL[name];
  return f ? [...decode(value, f), ""] : [];
}

/** The -H lines under an Identify Namespace field, or none when it is not decoded. */
export function nsFieldLines(name: string, value: number): string[] {
  const f = NS[name];
  return f ? [...decode(value, f), ""] : [];
}

/** SMART critical warning bits, as "      name[bit] : 0|1" lines. */
export function criticalWarningLines(cw: number): string[] {
  const names = ["Available Spare", "Temp. Threshold", "NVM subsystem Reliability", "Read-only", "Volatile mem. backup failed", "Persistent Mem. RO"];
  return names.map((n, i) => `      ${`${n}[${i}]`.padEnd(30)} : ${(cw >>> i) & 1}`);
}

/** What the DW0 of a feature means, one "\t" line per field; [] for features not decoded. */
export function featureLines(fid: number, v: number, data: Uint8Array | undefined): string[] {
  const f = (hi: number, lo: number) => Math.floor(v / 2 ** lo) % 2 ** (hi - lo + 1);
  switch (fid) {
    case 0x01:
      return [
        `\tHigh Priority Weight   (HPW): ${f(31, 24) + 1}`,
        `\tMedium Priority Weight (MPW): ${f(23, 16) + 1}`,
        `\tLow Priority Weight    (LPW): ${f(15, 8) + 1}`,
        `\tArbitration Burst       (AB): ${f(2, 0) === 7 ? "No limit" : 2 ** f(2, 0)}`,
      ];
    case 0x02:
      return [`\tWorkload Hint (WH): ${f(7, 5)}`, `\tPower State   (PS): ${f(4, 0)}`];
    case 0x04:
      return [
        `\tThreshold Type Select         (THSEL): ${f(21, 20)} - ${["Over Temperature Threshold", "Under Temperature Threshold", "Reserved", "Reserved"][f(21, 20)]}`,
        `\tThreshold Temperature Select (TMPSEL): ${f(19, 16)} - ${f(19, 16) === 0 ? "Composite Temperature" : f(19, 16) <= 8 ? `Temperature Sensor ${f(19, 16)}` : f(19, 16) === 15 ? "All Temperature Sensors" : "Reserved"}`,
        `\tTemperature Threshold         (TMPTH): ${kelvin(f(15, 0))}`,
      ];
    case 0x05:
      return [`\tDeallocated or Unwritten Logical Block Error Enable (DULBE): ${f(16, 16) ? "Enabled" : "Disabled"}`, `\tTime Limited Error Recovery (TLER): ${f(15, 0) * 100} ms`];
    case 0x06:
      return [`\tVolatile Write Cache Enable (WCE): ${f(0, 0) ? "Enabled" : "Disabled"}`];
    case 0x07:
      return [`\tNumber of IO Completion Queues Allocated (NCQA): ${f(31, 16) + 1}`, `\tNumber of IO Submission Queues Allocated (NSQA): ${f(15, 0) + 1}`];
    case 0x08:
      return [`\tAggregation Time     (TIME): ${f(15, 8) * 100} usec`, `\tAggregation Threshold (THR): ${f(7, 0) + 1}`];
    case 0x09:
      return [`\tCoalescing Disable (CD): ${f(16, 16) ? "True" : "False"}`, `\tInterrupt Vector   (IV): ${f(15, 0)}`];
    case 0x0a:
      return [`\tDisable Normal (DN): ${f(0, 0) ? "True" : "False"}`];
    case 0x0b: {
      const events: [number, string][] = [
        [31, "Discovery Log Page Change Notices"],
        [14, "Endurance Group Event Aggregate Log Change Notices"],
        [13, "LBA Status Information Notices"],
        [12, "Predictable Latency Event Aggregate Log Change Notices"],
        [11, "Asymmetric Namespace Access Change Notices"],
        [10, "Telemetry Log Notices"],
        [9, "Firmware Activation Notices"],
        [8, "Namespace Attribute Notices"],
      ];
      return [
        ...events.map(([b, n]) => `\t${n.padEnd(58)}: ${f(b, b) ? "Send async event" : "Do not send async event"}`),
        `\t${"SMART / Health Critical Warnings".padEnd(58)}: ${f(7, 0) ? `Send async event (${hex(f(7, 0))})` : "Do not send async event"}`,
      ];
    }
    case 0x0e: {
      if (!data || data.length < 8) return [];
      const ms = Number(new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true) & 0xffff_ffff_ffffn);
      const attrs = data[6] ?? 0;
      return [
        `\tThe timestamp is : ${ms} (${new Date(ms).toISOString()})`,
        `\t${(attrs >>> 1) & 7 ? "The controller may have stopped counting" : "The timestamp counted continuously since it was set"}`,
        `\t${attrs & 1 ? "The timestamp was set by a Set Features command" : "The timestamp was initialized by a Controller Level Reset"}`,
      ];
    }
    case 0x0f:
      return [`\tKeep Alive Timeout (KATO) in milliseconds: ${v}`];
    default:
      return [];
  }
}
