/**
 * Completion status names: the Status Code Types (SCT) and Status Codes (SC) of the NVMe Base
 * Specification 2.0 section 4.6.1 "Status Field Definition" (Generic Command Status, Command
 * Specific Status, Media and Data Integrity Errors, Path Related Status), plus the I/O command set
 * specific ranges (SC 80h-BFh) from the NVM, Zoned Namespace and Key Value command sets.
 *
 * Imports nothing: errors.ts (the bottom layer) names statuses through it. status.ts re-exports it
 * with the Status Field decoder.
 */

// ---------------------------------------------------------------------------------------------
// Status Code Type (SCT), Status Field bits 10:8
// ---------------------------------------------------------------------------------------------

export const SCT_GENERIC = 0x0;
export const SCT_COMMAND_SPECIFIC = 0x1;
export const SCT_MEDIA = 0x2;
export const SCT_PATH = 0x3;
/** SCT 4h-6h are reserved. */
export const SCT_VENDOR_SPECIFIC = 0x7;

// ---------------------------------------------------------------------------------------------
// Generic Command Status (SCT 0h)
// ---------------------------------------------------------------------------------------------

export const SC_SUCCESS = 0x00;
export const SC_INVALID_OPCODE = 0x01;
export const SC_INVALID_FIELD = 0x02;
export const SC_CID_CONFLICT = 0x03;
export const SC_DATA_TRANSFER_ERROR = 0x04;
export const SC_POWER_LOSS_ABORT = 0x05;
export const SC_INTERNAL_ERROR = 0x06;
export const SC_ABORT_REQUESTED = 0x07;
export const SC_SQ_DELETION = 0x08;
export const SC_FUSED_FAIL = 0x09;
export const SC_FUSED_MISSING = 0x0a;
export const SC_INVALID_NAMESPACE = 0x0b;
export const SC_COMMAND_SEQUENCE_ERROR = 0x0c;
export const SC_INVALID_PRP_OFFSET = 0x13;
export const SC_NAMESPACE_WRITE_PROTECTED = 0x20;
export const SC_COMMAND_INTERRUPTED = 0x21;
export const SC_TRANSIENT_TRANSPORT_ERROR = 0x22;
export const SC_ADMIN_MEDIA_NOT_READY = 0x24;
// I/O Command Set specific generic codes (80h-BFh); these are the NVM command set's.
export const SC_LBA_OUT_OF_RANGE = 0x80;
export const SC_CAPACITY_EXCEEDED = 0x81;
export const SC_NAMESPACE_NOT_READY = 0x82;
export const SC_RESERVATION_CONFLICT = 0x83;
export const SC_FORMAT_IN_PROGRESS = 0x84;

// ---------------------------------------------------------------------------------------------
// Command Specific Status (SCT 1h)
// ---------------------------------------------------------------------------------------------

export const SC_CQ_INVALID = 0x00;
export const SC_INVALID_QID = 0x01;
export const SC_INVALID_QUEUE_SIZE = 0x02;
export const SC_ABORT_LIMIT_EXCEEDED = 0x03;
export const SC_AER_LIMIT_EXCEEDED = 0x05;
export const SC_INVALID_FIRMWARE_SLOT = 0x06;
export const SC_INVALID_FIRMWARE_IMAGE = 0x07;
export const SC_INVALID_INTERRUPT_VECTOR = 0x08;
export const SC_INVALID_LOG_PAGE = 0x09;
export const SC_INVALID_FORMAT = 0x0a;
export const SC_FW_NEEDS_CONVENTIONAL_RESET = 0x0b;
export const SC_INVALID_QUEUE_DELETION = 0x0c;
export const SC_FEATURE_NOT_SAVEABLE = 0x0d;
export const SC_FEATURE_NOT_CHANGEABLE = 0x0e;
export const SC_FEATURE_NOT_NAMESPACE_SPECIFIC = 0x0f;
export const SC_FW_NEEDS_SUBSYSTEM_RESET = 0x10;
export const SC_FW_NEEDS_CONTROLLER_RESET = 0x11;
export const SC_FW_NEEDS_MAX_TIME_VIOLATION = 0x12;
export const SC_FW_ACTIVATION_PROHIBITED = 0x13;
export const SC_OVERLAPPING_RANGE = 0x14;
export const SC_CONFLICTING_ATTRIBUTES = 0x80;
export const SC_INVALID_PROTECTION_INFO = 0x81;
export const SC_WRITE_TO_READ_ONLY_RANGE = 0x82;

// ---------------------------------------------------------------------------------------------
// Media and Data Integrity Errors (SCT 2h)
// ---------------------------------------------------------------------------------------------

export const SC_WRITE_FAULT = 0x80;
export const SC_UNRECOVERED_READ = 0x81;
export const SC_GUARD_CHECK = 0x82;
export const SC_APPLICATION_TAG_CHECK = 0x83;
export const SC_REFERENCE_TAG_CHECK = 0x84;
export const SC_COMPARE_FAILURE = 0x85;
export const SC_ACCESS_DENIED = 0x86;
export const SC_DEALLOCATED_OR_UNWRITTEN = 0x87;
export const SC_STORAGE_TAG_CHECK = 0x88;

// ---------------------------------------------------------------------------------------------
// Path Related Status (SCT 3h)
// ---------------------------------------------------------------------------------------------

export const SC_INTERNAL_PATH_ERROR = 0x00;
export const SC_ANA_PERSISTENT_LOSS = 0x01;
export const SC_ANA_INACCESSIBLE = 0x02;
export const SC_ANA_TRANSITION = 0x03;
export const SC_CONTROLLER_PATHING_ERROR = 0x60;
export const SC_HOST_PATHING_ERROR = 0x70;
export const SC_ABORTED_BY_HOST = 0x71;

// ---------------------------------------------------------------------------------------------
// Name tables
// ---------------------------------------------------------------------------------------------

const GENERIC: ReadonlyMap<number, string> = new Map([
  [0x00, "Successful Completion"],
  [0x01, "Invalid Command Opcode"],
  [0x02, "Invalid Field in Command"],
  [0x03, "Command ID Conflict"],
  [0x04, "Data Transfer Error"],
  [0x05, "Commands Aborted due to Power Loss Notification"],
  [0x06, "Internal Error"],
  [0x07, "Command Abort Requested"],
  [0x08, "Command Aborted due to SQ Deletion"],
  [0x09, "Command Aborted due to Failed Fused Command"],
  [0x0a, "Command Aborted due to Missing Fused Command"],
  [0x0b, "Invalid Namespace or Format"],
  [0x0c, "Command Sequence Error"],
  [0x0d, "Invalid SGL Segment Descriptor"],
  [0x0e, "Invalid Number of SGL Descriptors"],
  [0x0f, "Data SGL Length Invalid"],
  [0x10, "Metadata SGL Length Invalid"],
  [0x11, "SGL Descriptor Type Invalid"],
  [0x12, "Invalid Use of Controller Memory Buffer"],
  [0x13, "PRP Offset Invalid"],
  [0x14, "Atomic Write Unit Exceeded"],
  [0x15, "Operation Denied"],
  [0x16, "SGL Offset Invalid"],
  // 17h is reserved.
  [0x18, "Host Identifier Inconsistent Format"],
  [0x19, "Keep Alive Timer Expired"],
  [0x1a, "Keep Alive Timeout Invalid"],
  [0x1b, "Command Aborted due to Preempt and Abort"],
  [0x1c, "Sanitize Failed"],
  [0x1d, "Sanitize In Progress"],
  [0x1e, "SGL Data Block Granularity Invalid"],
  [0x1f, "Command Not Supported for Queue in CMB"],
  [0x20, "Namespace is Write Protected"],
  [0x21, "Command Interrupted"],
  [0x22, "Transient Transport Error"],
  [0x23, "Command Prohibited by Command and Feature Lockdown"],
  [0x24, "Admin Command Media Not Ready"],
  // 25h-28h: defined by later revisions than 2.0 (key tags, dispersed namespaces); left to the fallback.
  [0x29, "FDP Disabled"],
  [0x2a, "Invalid Placement Handle List"],
  // 80h-BFh: I/O command set specific. NVM command set (Base 2.0 figure "Generic Command Status
  // Values, I/O Command Set Specific"), then the Key Value command set's 85h-89h.
  [0x80, "LBA Out of Range"],
  [0x81, "Capacity Exceeded"],
  [0x82, "Namespace Not Ready"],
  [0x83, "Reservation Conflict"],
  [0x84, "Format In Progress"],
  [0x85, "Invalid Value Size"],
  [0x86, "Invalid Key Size"],
  [0x87, "KV Key Does Not Exist"],
  [0x88, "Unrecovered Error"],
  [0x89, "Key Exists"],
]);

const COMMAND_SPECIFIC: ReadonlyMap<number, string> = new Map([
  [0x00, "Completion Queue Invalid"],
  [0x01, "Invalid Queue Identifier"],
  [0x02, "Invalid Queue Size"],
  [0x03, "Abort Command Limit Exceeded"],
  // 04h was "Abort Command Is Missing" before 1.3 and is reserved in 2.0.
  [0x05, "Asynchronous Event Request Limit Exceeded"],
  [0x06, "Invalid Firmware Slot"],
  [0x07, "Invalid Firmware Image"],
  [0x08, "Invalid Interrupt Vector"],
  [0x09, "Invalid Log Page"],
  [0x0a, "Invalid Format"],
  [0x0b, "Firmware Activation Requires Conventional Reset"],
  [0x0c, "Invalid Queue Deletion"],
  [0x0d, "Feature Identifier Not Saveable"],
  [0x0e, "Feature Not Changeable"],
  [0x0f, "Feature Not Namespace Specific"],
  [0x10, "Firmware Activation Requires NVM Subsystem Reset"],
  [0x11, "Firmware Activation Requires Controller Level Reset"],
  [0x12, "Firmware Activation Requires Maximum Time Violation"],
  [0x13, "Firmware Activation Prohibited"],
  [0x14, "Overlapping Range"],
  [0x15, "Namespace Insufficient Capacity"],
  [0x16, "Namespace Identifier Unavailable"],
  // 17h is reserved.
  [0x18, "Namespace Already Attached"],
  [0x19, "Namespace Is Private"],
  [0x1a, "Namespace Not Attached"],
  [0x1b, "Thin Provisioning Not Supported"],
  [0x1c, "Controller List Invalid"],
  [0x1d, "Device Self-test In Progress"],
  [0x1e, "Boot Partition Write Prohibited"],
  [0x1f, "Invalid Controller Identifier"],
  [0x20, "Invalid Secondary Controller State"],
  [0x21, "Invalid Number of Controller Resources"],
  [0x22, "Invalid Resource Identifier"],
  [0x23, "Sanitize Prohibited While Persistent Memory Region is Enabled"],
  [0x24, "ANA Group Identifier Invalid"],
  [0x25, "ANA Attach Failed"],
  [0x26, "Insufficient Capacity"],
  [0x27, "Namespace Attachment Limit Exceeded"],
  [0x28, "Prohibition of Command Execution Not Supported"],
  [0x29, "I/O Command Set Not Supported"],
  [0x2a, "I/O Command Set Not Enabled"],
  [0x2b, "I/O Command Set Combination Rejected"],
  [0x2c, "Invalid I/O Command Set"],
  [0x2d, "Identifier Unavailable"],
  // Directives (Streams) allocation failure.
  [0x7f, "Stream Resource Allocation Failed"],
  // 80h-BFh: I/O command set specific. The NVM command set's, then the Zoned Namespace set's
  // B8h-BFh. (Fabrics reuses 80h-84h for Connect; this library drives PCIe controllers only.)
  [0x80, "Conflicting Attributes"],
  [0x81, "Invalid Protection Information"],
  [0x82, "Attempted Write to Read Only Range"],
  [0x83, "Command Size Limit Exceeded"],
  [0xb8, "Zoned Boundary Error"],
  [0xb9, "Zone Is Full"],
  [0xba, "Zone Is Read Only"],
  [0xbb, "Zone Is Offline"],
  [0xbc, "Zone Invalid Write"],
  [0xbd, "Too Many Active Zones"],
  [0xbe, "Too Many Open Zones"],
  [0xbf, "Invalid Zone State Transition"],
]);

const MEDIA: ReadonlyMap<number, string> = new Map([
  [0x80, "Write Fault"],
  [0x81, "Unrecovered Read Error"],
  [0x82, "End-to-end Guard Check Error"],
  [0x83, "End-to-end Application Tag Check Error"],
  [0x84, "End-to-end Reference Tag Check Error"],
  [0x85, "Compare Failure"],
  [0x86, "Access Denied"],
  [0x87, "Deallocated or Unwritten Logical Block"],
  [0x88, "End-to-end Storage Tag Check Error"],
]);

const PATH: ReadonlyMap<number, string> = new Map([
  [0x00, "Internal Path Error"],
  [0x01, "Asymmetric Access Persistent Loss"],
  [0x02, "Asymmetric Access Inaccessible"],
  [0x03, "Asymmetric Access Transition"],
  [0x60, "Controller Pathing Error"],
  [0x70, "Host Pathing Error"],
  [0x71, "Command Aborted By Host"],
]);

const TABLES: ReadonlyArray<ReadonlyMap<number, string> | undefined> = [
  GENERIC,
  COMMAND_SPECIFIC,
  MEDIA,
  PATH,
];

const TYPE_NAMES = [
  "generic",
  "command specific",
  "media and data integrity",
  "path related",
] as const;

function hex2(v: number): string {
  return "0x" + v.toString(16).padStart(2, "0");
}

/** SCT is a 3-bit field: 0..7. */
function isSct(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0x7;
}

/** SC is an 8-bit field: 0..255. */
function isSc(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xff;
}

/** A value for a message: hex when it is a plausible field value, else as JavaScript prints it (NaN, 1.5, -3). */
function show(v: number): string {
  return Number.isSafeInteger(v) && v >= 0 ? hex2(v) : String(v);
}

/**
 * Lower-case name of a Status Code Type, as used in error messages. Total: any argument gives a
 * string (NvmeStatusError calls it while constructing itself, so it must not throw); a value that
 * is not a 3-bit integer gives "invalid".
 */
export function statusTypeName(sct: number): string {
  if (!isSct(sct)) return "invalid";
  if (sct === SCT_VENDOR_SPECIFIC) return "vendor specific";
  return TYPE_NAMES[sct] ?? "reserved";
}

/**
 * The specification's name for a status. Codes the tables do not define get a descriptive
 * fallback that still carries the raw value, e.g. "Unknown generic status 0x3f". Total like
 * statusTypeName: an SCT that is not an integer in 0..7 or an SC that is not one in 0..255 gives
 * an "Invalid ..." string naming the value rather than an exception.
 */
export function statusName(sct: number, sc: number): string {
  if (!isSct(sct)) return `Invalid status code type ${show(sct)}, status ${show(sc)}`;
  if (!isSc(sc)) return `Invalid status code ${show(sc)} (status code type ${hex2(sct)})`;
  if (sct === SCT_VENDOR_SPECIFIC) return `Vendor specific status ${hex2(sc)}`;
  const table = TABLES[sct];
  const type = TYPE_NAMES[sct];
  if (table === undefined || type === undefined) return `Reserved status code type ${hex2(sct)}, status ${hex2(sc)}`;
  const name = table.get(sc);
  if (name !== undefined) return name;
  // C0h-FFh is vendor specific within every defined SCT (Base 2.0 figure "Status Code" ranges).
  if (sc >= 0xc0) return `Vendor specific ${type} status ${hex2(sc)}`;
  return `Unknown ${type} status ${hex2(sc)}`;
}
