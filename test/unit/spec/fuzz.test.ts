/**
 * Property test: the parsers and decoders in lib/spec never crash. Fed random bytes of random
 * length, truncated and bit-flipped valid structures, all-ones structures, views into larger
 * buffers and random scalars (negative, fractional, NaN, wider than the field), each call either
 * returns a well-formed value (fields present, of the right type and inside their field's range)
 * or throws ParseError / InvalidArgumentError. Anything else fails the test with the seed, the
 * case number and the input.
 *
 * Deterministic: every case draws from its own mulberry32 stream seeded from (seed, property,
 * case), so one failing case can be replayed alone. Override with LIBNVM_FUZZ_SEED=<n>; scale the
 * case counts with LIBNVM_FUZZ_SCALE=<factor> (default 1).
 */
import { describe, expect, test } from "bun:test";
import { InvalidArgumentError, ParseError } from "../../../lib/errors.ts";
import {
  IDENTIFY_DATA_SIZE,
  formatVersion,
  mdtsBytes,
  parseIdentifyController,
  parseIdentifyNamespace,
  parseNamespaceList,
  type IdentifyController,
  type IdentifyNamespace,
} from "../../../lib/spec/identify.ts";
import {
  ERROR_LOG_ENTRY_SIZE,
  FW_SLOT_LOG_SIZE,
  SMART_LOG_SIZE,
  getLogPageCdws,
  getLogPageDwords,
  parseErrorLog,
  parseFirmwareSlotLog,
  parseSmartLog,
  type ErrorLogEntry,
  type FirmwareSlotLog,
  type GetLogPageOptions,
  type SmartLog,
} from "../../../lib/spec/log.ts";
import { decodeAqa, decodeCap, decodeCc, decodeCsts, decodeVersion, encodeCc } from "../../../lib/spec/registers.ts";
import { decodeStatus, encodeStatus, statusName, statusTypeName } from "../../../lib/spec/status.ts";

// ---------------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------------

const SEED = (() => {
  const env = process.env.LIBNVM_FUZZ_SEED;
  const n = env === undefined ? 0x6e766d65 : Number(env); // "nvme"
  if (!Number.isSafeInteger(n)) throw new Error(`LIBNVM_FUZZ_SEED=${env} is not an integer`);
  return n >>> 0;
})();
const SCALE = Math.max(0.01, Number(process.env.LIBNVM_FUZZ_SCALE ?? 1) || 1);
const n = (count: number) => Math.max(1, Math.round(count * SCALE));

/** mulberry32: 32-bit state, full period, good enough for test inputs. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** FNV-1a over a string, to give every property its own seed stream. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  u32(): number {
    return this.next();
  }
  /** Integer in lo..hi inclusive (hi - lo < 2^32). */
  int(lo: number, hi: number): number {
    return lo + Math.floor((this.next() / 2 ** 32) * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)] as T;
  }
  bytes(len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (let i = 0; i < len; i += 4) {
      const r = this.next();
      out[i] = r;
      if (i + 1 < len) out[i + 1] = r >>> 8;
      if (i + 2 < len) out[i + 2] = r >>> 16;
      if (i + 3 < len) out[i + 3] = r >>> 24;
    }
    return out;
  }
  /** A number from everywhere a caller could get one wrong: edges, negatives, fractions, NaN, huge. */
  weird(): number {
    switch (this.int(0, 9)) {
      case 0:
        return this.pick(EDGE_NUMBERS);
      case 1:
        return this.u32();
      case 2:
        return this.u32() * 2 ** 21 + this.int(0, 2 ** 21 - 1); // up to 2^53
      case 3:
        return -this.u32();
      case 4:
        return this.u32() / 2 ** this.int(1, 32); // usually fractional
      case 5:
        return this.int(0, 0xff);
      case 6:
        return this.int(0, 0xffff);
      case 7:
        return (this.u32() | 0) + this.pick([0.5, -0.25, 1e-9]);
      case 8:
        return this.pick([2 ** 32, 2 ** 32 + 1, 2 ** 33, 2 ** 40, 2 ** 52, 2 ** 53, 2 ** 64, 1e21, 1e300]);
      default:
        return this.int(-8, 8);
    }
  }
}

const EDGE_NUMBERS: readonly number[] = [
  0,
  -0,
  1,
  -1,
  0.5,
  NaN,
  Infinity,
  -Infinity,
  Number.MAX_SAFE_INTEGER,
  Number.MIN_SAFE_INTEGER,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  Number.EPSILON,
  0x7f,
  0x80,
  0xff,
  0x100,
  0x7fff,
  0x8000,
  0xffff,
  0x10000,
  0x7fffffff,
  0x80000000,
  -0x80000000,
  -0x80000001,
  0xffffffff,
  2 ** 32,
];

// ---------------------------------------------------------------------------------------------
// The property harness
// ---------------------------------------------------------------------------------------------

/** Thrown by a check: the parser returned, but the value is malformed. */
class PropertyViolation extends Error {
  override readonly name = "PropertyViolation";
}

function fail(msg: string): never {
  throw new PropertyViolation(msg);
}

function isTyped(e: unknown): boolean {
  return e instanceof ParseError || e instanceof InvalidArgumentError;
}

function describeValue(v: unknown): string {
  if (v instanceof Uint8Array) {
    const head = Array.from(v.subarray(0, 48), (b) => b.toString(16).padStart(2, "0")).join("");
    return `Uint8Array(len ${v.byteLength}, byteOffset ${v.byteOffset}, buffer ${v.buffer.byteLength}) ${head}${v.byteLength > 48 ? "..." : ""}`;
  }
  if (typeof v === "number") return Object.is(v, -0) ? "-0" : String(v);
  if (typeof v === "bigint") return `${v}n`;
  if (Array.isArray(v)) return `[${v.map(describeValue).join(", ")}]`;
  if (v !== null && typeof v === "object") {
    return `{ ${Object.entries(v)
      .map(([k, x]) => `${k}: ${describeValue(x)}`)
      .join(", ")} }`;
  }
  return String(v);
}

interface Tally {
  cases: number;
  values: number;
  typedErrors: number;
}
const totals = { cases: 0, ms: 0 };

/**
 * Run `count` cases of `prop`. Each case gets a fresh Rng seeded from (SEED, name, index) and
 * returns the inputs it used (for the failure message) plus the outcome of calling the parser.
 */
function property<I extends unknown[]>(
  name: string,
  count: number,
  gen: (rng: Rng, i: number) => readonly [...I],
  run: (...input: I) => void,
): Tally {
  const tally: Tally = { cases: 0, values: 0, typedErrors: 0 };
  const base = (SEED ^ fnv1a(name)) >>> 0;
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const rng = new Rng((base + Math.imul(i, 0x9e3779b9)) >>> 0);
    const input = gen(rng, i);
    tally.cases++;
    try {
      run(...(input as I));
      tally.values++;
    } catch (e) {
      if (isTyped(e)) {
        if (typeof (e as Error).message !== "string" || (e as Error).message.length === 0) {
          throw new Error(`${name}: ${(e as Error).name} with an empty message (seed ${SEED}, case ${i})`);
        }
        tally.typedErrors++;
        continue;
      }
      const err = e as Error;
      throw new Error(
        `${name}: case ${i} of ${count} threw ${err?.name ?? typeof e}: ${err?.message ?? String(e)}\n` +
          `  replay with LIBNVM_FUZZ_SEED=${SEED} (case ${i})\n` +
          `  input: ${input.map(describeValue).join(", ")}`,
        { cause: e },
      );
    }
  }
  totals.cases += tally.cases;
  totals.ms += performance.now() - t0;
  return tally;
}

// ---------------------------------------------------------------------------------------------
// Field checks
// ---------------------------------------------------------------------------------------------

type Kind =
  | "u1"
  | "u2"
  | "u3"
  | "u5"
  | "u4"
  | "u8"
  | "u16"
  | "u24"
  | "u32"
  | "u64n"
  | "u128n"
  | "bool"
  | "string"
  | "hex16"
  | "hex32"
  | "skip";

const UINT_MAX: Record<string, number> = {
  u1: 1,
  u2: 3,
  u3: 7,
  u4: 15,
  u5: 31,
  u8: 0xff,
  u16: 0xffff,
  u24: 0xffffff,
  u32: 0xffffffff,
};

function checkField(where: string, v: unknown, kind: Kind): void {
  if (kind === "skip") return;
  const max = UINT_MAX[kind];
  if (max !== undefined) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max || Object.is(v, -0)) {
      fail(`${where} = ${describeValue(v)} is not an integer in 0..${max}`);
    }
    return;
  }
  switch (kind) {
    case "u64n":
    case "u128n": {
      const bits = kind === "u64n" ? 64n : 128n;
      if (typeof v !== "bigint" || v < 0n || v >= 1n << bits) fail(`${where} = ${describeValue(v)} is not a u${bits} bigint`);
      return;
    }
    case "bool":
      if (typeof v !== "boolean") fail(`${where} = ${describeValue(v)} is not a boolean`);
      return;
    case "string":
      if (typeof v !== "string") fail(`${where} = ${describeValue(v)} is not a string`);
      return;
    case "hex16":
    case "hex32": {
      const len = kind === "hex16" ? 16 : 32;
      if (typeof v !== "string" || !new RegExp(`^[0-9a-f]{${len}}$`).test(v)) fail(`${where} = ${describeValue(v)} is not ${len} hex digits`);
      return;
    }
  }
}

/** The value has exactly the keys of `schema`, each of its kind. */
function checkShape(what: string, value: unknown, schema: Record<string, Kind>): Record<string, unknown> {
  if (value === null || typeof value !== "object") fail(`${what} is ${describeValue(value)}, not an object`);
  const obj = value as Record<string, unknown>;
  for (const key of Object.keys(schema)) {
    if (!(key in obj) || obj[key] === undefined) fail(`${what}.${key} is missing`);
    checkField(`${what}.${key}`, obj[key], schema[key] as Kind);
  }
  for (const key of Object.keys(obj)) if (!(key in schema)) fail(`${what}.${key} is not a documented field`);
  return obj;
}

function isPow2(v: unknown, lo: number, hi: number): boolean {
  return typeof v === "number" && Number.isInteger(v) && v >= lo && v <= hi && 2 ** Math.round(Math.log2(v)) === v;
}

// ---- Identify Controller ----

const PSD_SCHEMA: Record<string, Kind> = {
  mp: "u16",
  mxps: "u1",
  nops: "bool",
  enlat: "u32",
  exlat: "u32",
  rrt: "u5",
  rrl: "u5",
  rwt: "u5",
  rwl: "u5",
  idlp: "u16",
  ips: "u2",
  actp: "u16",
  apw: "u3",
  aps: "u2",
  maxPowerWatts: "skip",
};

const CTRL_SCHEMA: Record<string, Kind> = {
  vid: "u16",
  ssvid: "u16",
  sn: "string",
  mn: "string",
  fr: "string",
  rab: "u8",
  ieee: "u24",
  cmic: "u8",
  mdts: "u8",
  cntlid: "u16",
  ver: "u32",
  rtd3r: "u32",
  rtd3e: "u32",
  oaes: "u32",
  ctratt: "u32",
  rrls: "u16",
  cntrltype: "u8",
  fguid: "hex32",
  crdt1: "u16",
  crdt2: "u16",
  crdt3: "u16",
  nvmsr: "u8",
  vwci: "u8",
  mec: "u8",
  oacs: "u16",
  acl: "u8",
  aerl: "u8",
  frmw: "u8",
  lpa: "u8",
  elpe: "u8",
  npss: "u8",
  avscc: "u8",
  apsta: "u8",
  wctemp: "u16",
  cctemp: "u16",
  mtfa: "u16",
  hmpre: "u32",
  hmmin: "u32",
  tnvmcap: "u128n",
  unvmcap: "u128n",
  rpmbs: "u32",
  edstt: "u16",
  dsto: "u8",
  fwug: "u8",
  kas: "u16",
  hctma: "u16",
  mntmt: "u16",
  mxtmt: "u16",
  sanicap: "u32",
  hmminds: "u32",
  hmmaxd: "u16",
  nsetidmax: "u16",
  endgidmax: "u16",
  anatt: "u8",
  anacap: "u8",
  anagrpmax: "u32",
  nanagrpid: "u32",
  pels: "u32",
  domainid: "u16",
  megcap: "u128n",
  sqes: "u8",
  sqesMin: "skip",
  sqesMax: "skip",
  cqes: "u8",
  cqesMin: "skip",
  cqesMax: "skip",
  maxcmd: "u16",
  nn: "u32",
  oncs: "u16",
  fuses: "u16",
  fna: "u8",
  vwc: "u8",
  awun: "u16",
  awupf: "u16",
  nvscc: "u8",
  nwpc: "u8",
  acwu: "u16",
  ocfs: "u16",
  sgls: "u32",
  mnan: "u32",
  maxdna: "u128n",
  maxcna: "u32",
  subnqn: "string",
  ioccsz: "u32",
  iorcsz: "u32",
  icdoff: "u16",
  ctrattr: "u8",
  msdbd: "u8",
  ofcs: "u16",
  psd: "skip",
};

function checkController(id: IdentifyController): void {
  checkShape("IdentifyController", id, CTRL_SCHEMA);
  if (id.sn.length > 20 || id.mn.length > 40 || id.fr.length > 8) fail(`SN/MN/FR longer than their fields`);
  if (id.subnqn.length > 256) fail(`SUBNQN longer than 256 bytes`);
  for (const [k, raw] of [
    ["sqes", id.sqes],
    ["cqes", id.cqes],
  ] as const) {
    const o = id as unknown as Record<string, number>;
    if (o[`${k}Min`] !== 2 ** (raw & 0xf) || o[`${k}Max`] !== 2 ** (raw >>> 4)) fail(`${k}Min/${k}Max do not match ${k} ${raw}`);
    if (!isPow2(o[`${k}Min`], 1, 2 ** 15) || !isPow2(o[`${k}Max`], 1, 2 ** 15)) fail(`${k}Min/${k}Max out of range`);
  }
  if (!Array.isArray(id.psd)) fail("psd is not an array");
  const expected = Math.min(id.npss + 1, 32);
  if (id.psd.length !== expected) fail(`psd has ${id.psd.length} descriptors, NPSS ${id.npss} documents ${expected}`);
  id.psd.forEach((ps, i) => {
    checkShape(`psd[${i}]`, ps, PSD_SCHEMA);
    const w = ps.maxPowerWatts;
    if (!Number.isFinite(w) || w < 0 || w > 655.35 || w !== (ps.mxps ? ps.mp / 10000 : ps.mp / 100)) {
      fail(`psd[${i}].maxPowerWatts ${w} does not follow from MP ${ps.mp} / MXPS ${ps.mxps}`);
    }
  });
}

// ---- Identify Namespace ----

const NS_SCHEMA: Record<string, Kind> = {
  nsze: "u64n",
  ncap: "u64n",
  nuse: "u64n",
  nsfeat: "u8",
  nlbaf: "u8",
  flbas: "u8",
  mc: "u8",
  dpc: "u8",
  dps: "u8",
  nmic: "u8",
  rescap: "u8",
  fpi: "u8",
  dlfeat: "u8",
  nawun: "u16",
  nawupf: "u16",
  nacwu: "u16",
  nabsn: "u16",
  nabo: "u16",
  nabspf: "u16",
  noiob: "u16",
  nvmcap: "u128n",
  npwg: "u16",
  npwa: "u16",
  npdg: "u16",
  npda: "u16",
  nows: "u16",
  mssrl: "u16",
  mcl: "u32",
  msrc: "u8",
  nulbaf: "u8",
  anagrpid: "u32",
  nsattr: "u8",
  nvmsetid: "u16",
  endgid: "u16",
  nguid: "hex32",
  eui64: "hex16",
  lbaf: "skip",
  formatIndex: "skip",
  extendedMetadata: "bool",
  lbaSize: "skip",
  metadataSize: "u16",
  isActive: "bool",
};

const LBAF_SCHEMA: Record<string, Kind> = { ms: "u16", lbads: "u8", rp: "u2" };

function checkNamespace(ns: IdentifyNamespace): void {
  checkShape("IdentifyNamespace", ns, NS_SCHEMA);
  if (!Array.isArray(ns.lbaf) || ns.lbaf.length !== Math.min(ns.nlbaf + 1, 64)) {
    fail(`lbaf has ${ns.lbaf?.length} formats for NLBAF ${ns.nlbaf}`);
  }
  ns.lbaf.forEach((f, i) => checkShape(`lbaf[${i}]`, f, LBAF_SCHEMA));
  if (!Number.isInteger(ns.formatIndex) || ns.formatIndex < 0 || ns.formatIndex > 63) fail(`formatIndex ${ns.formatIndex} out of 0..63`);
  if (ns.isActive !== (ns.nsze !== 0n)) fail(`isActive ${ns.isActive} with NSZE ${ns.nsze}`);
  if (ns.isActive) {
    const cur = ns.lbaf[ns.formatIndex];
    if (cur === undefined) fail(`formatIndex ${ns.formatIndex} names no format in lbaf`);
    if (!isPow2(ns.lbaSize, 512, 2 ** 30) || ns.lbaSize !== 2 ** cur.lbads) fail(`lbaSize ${ns.lbaSize} for LBADS ${cur.lbads}`);
    if (ns.metadataSize !== cur.ms) fail(`metadataSize ${ns.metadataSize} != LBAF ms ${cur.ms}`);
  } else if (ns.lbaSize !== 0 || ns.metadataSize !== 0) {
    fail(`inactive namespace with lbaSize ${ns.lbaSize} / metadataSize ${ns.metadataSize}`);
  }
}

// ---- Namespace list ----

function checkNamespaceList(list: number[], data: Uint8Array): void {
  if (!Array.isArray(list) || list.length > 1024) fail(`namespace list of length ${list?.length}`);
  list.forEach((nsid, i) => {
    checkField(`nsid[${i}]`, nsid, "u32");
    if (nsid === 0) fail(`nsid[${i}] is 0; the list ends at the first zero`);
  });
  // Everything up to the first zero, in order.
  const v = new DataView(data.buffer, data.byteOffset, IDENTIFY_DATA_SIZE);
  for (let i = 0; i < list.length; i++) if (v.getUint32(4 * i, true) !== list[i]) fail(`nsid[${i}] is not the dword at byte ${4 * i}`);
  if (list.length < 1024 && v.getUint32(4 * list.length, true) !== 0) fail(`list stopped at ${list.length} before a zero entry`);
}

// ---- Log pages ----

const CW_SCHEMA: Record<string, Kind> = {
  availableSpare: "bool",
  temperature: "bool",
  reliabilityDegraded: "bool",
  readOnly: "bool",
  volatileBackupFailed: "bool",
  pmrReadOnly: "bool",
};

const SMART_SCHEMA: Record<string, Kind> = {
  criticalWarning: "u8",
  criticalWarnings: "skip",
  compositeTemperature: "u16",
  compositeTemperatureCelsius: "skip",
  availableSpare: "u8",
  availableSpareThreshold: "u8",
  percentageUsed: "u8",
  enduranceGroupCriticalWarning: "u8",
  dataUnitsRead: "u128n",
  dataUnitsWritten: "u128n",
  hostReadCommands: "u128n",
  hostWriteCommands: "u128n",
  controllerBusyTime: "u128n",
  powerCycles: "u128n",
  powerOnHours: "u128n",
  unsafeShutdowns: "u128n",
  mediaErrors: "u128n",
  numErrLogEntries: "u128n",
  warningTempTime: "u32",
  criticalCompTime: "u32",
  temperatureSensors: "skip",
  tmt1TransitionCount: "u32",
  tmt2TransitionCount: "u32",
  tmt1TotalTime: "u32",
  tmt2TotalTime: "u32",
};

function checkSmart(s: SmartLog): void {
  checkShape("SmartLog", s, SMART_SCHEMA);
  checkShape("SmartLog.criticalWarnings", s.criticalWarnings, CW_SCHEMA);
  if (s.compositeTemperatureCelsius !== s.compositeTemperature - 273) fail(`compositeTemperatureCelsius ${s.compositeTemperatureCelsius}`);
  if (!Array.isArray(s.temperatureSensors) || s.temperatureSensors.length !== 8) fail(`temperatureSensors length ${s.temperatureSensors?.length}`);
  s.temperatureSensors.forEach((k, i) => {
    if (k === null) return;
    checkField(`temperatureSensors[${i}]`, k, "u16");
    if (k === 0) fail(`temperatureSensors[${i}] is 0 rather than null`);
  });
}

const STATUS_SCHEMA: Record<string, Kind> = { sct: "u3", sc: "u8", crd: "u2", more: "bool", dnr: "bool" };

const ERROR_ENTRY_SCHEMA: Record<string, Kind> = {
  errorCount: "u64n",
  sqid: "u16",
  cid: "u16",
  status: "skip",
  statusFields: "skip",
  phaseTag: "u1",
  parameterErrorLocation: "u16",
  parameterErrorByte: "skip",
  parameterErrorBit: "skip",
  lba: "u64n",
  nsid: "u32",
  vsia: "u8",
  trtype: "u8",
  csi: "u64n",
  ttsi: "u16",
};

function checkErrorLog(log: ErrorLogEntry[], data: Uint8Array, entries: number | undefined): void {
  const asked = entries ?? Math.floor(data.byteLength / ERROR_LOG_ENTRY_SIZE);
  if (!Array.isArray(log) || log.length > asked) fail(`error log of ${log?.length} entries for ${asked} asked`);
  log.forEach((e, i) => {
    checkShape(`entry[${i}]`, e, ERROR_ENTRY_SCHEMA);
    checkField(`entry[${i}].status`, e.status, "u16");
    if (e.status > 0x7fff) fail(`entry[${i}].status ${e.status} wider than 15 bits`);
    checkShape(`entry[${i}].statusFields`, e.statusFields, STATUS_SCHEMA);
    if (encodeStatus(e.statusFields) !== e.status) fail(`entry[${i}].statusFields do not encode back to ${e.status}`);
    if (e.errorCount === 0n) fail(`entry[${i}] is an unused slot (Error Count 0)`);
    const na = e.parameterErrorLocation === 0xffff;
    if (na ? e.parameterErrorByte !== null || e.parameterErrorBit !== null : e.parameterErrorByte === null || e.parameterErrorBit === null) {
      fail(`entry[${i}] parameter error byte/bit disagree with location ${e.parameterErrorLocation}`);
    }
    if (!na) {
      checkField(`entry[${i}].parameterErrorByte`, e.parameterErrorByte, "u8");
      checkField(`entry[${i}].parameterErrorBit`, e.parameterErrorBit, "u3");
    }
  });
}

function checkFwSlot(fw: FirmwareSlotLog): void {
  const schema: Record<string, Kind> = { afi: "u8", activeSlot: "u3", nextSlot: "u3", frs: "skip" };
  for (let s = 1; s <= 7; s++) schema[`frs${s}`] = "string";
  checkShape("FirmwareSlotLog", fw, schema);
  if (!Array.isArray(fw.frs) || fw.frs.length !== 7) fail(`frs has ${fw.frs?.length} slots`);
  fw.frs.forEach((r, i) => {
    if (typeof r !== "string" || r.length > 8) fail(`frs[${i}] = ${describeValue(r)}`);
    if ((fw as unknown as Record<string, string>)[`frs${i + 1}`] !== r) fail(`frs${i + 1} != frs[${i}]`);
  });
}

// ---------------------------------------------------------------------------------------------
// Valid fixtures
// ---------------------------------------------------------------------------------------------

function controllerFixture(): Uint8Array {
  const b = new Uint8Array(IDENTIFY_DATA_SIZE);
  const v = new DataView(b.buffer);
  const text = (off: number, len: number, s: string) => {
    for (let i = 0; i < len; i++) b[off + i] = i < s.length ? s.charCodeAt(i) : 0x20;
  };
  v.setUint16(0, 0x1b36, true);
  v.setUint16(2, 0x1af4, true);
  text(4, 20, "SN-0123456789");
  text(24, 40, "QEMU NVMe Ctrl");
  text(64, 8, "8.2.0");
  b[72] = 6;
  b.set([0x00, 0x54, 0x52], 73);
  b[77] = 7; // MDTS
  v.setUint32(80, 0x00010400, true);
  b.set([0x12, 0x34, 0x56, 0x78], 112);
  b[262] = 63; // ELPE
  b[263] = 3; // NPSS
  v.setUint16(266, 343, true);
  v.setUint16(268, 353, true);
  v.setBigUint64(280, 0x1234_5678_9abcn, true);
  b[512] = 0x66; // SQES
  b[513] = 0x44; // CQES
  v.setUint32(516, 256, true); // NN
  v.setUint16(520, 0x5f, true);
  b[525] = 1;
  const nqn = "nqn.2019-08.org.qemu:nvme-ctrl";
  for (let i = 0; i < nqn.length; i++) b[768 + i] = nqn.charCodeAt(i);
  for (let i = 0; i < 4; i++) {
    v.setUint16(2048 + 32 * i, 2500 - 500 * i, true);
    b[2048 + 32 * i + 3] = i === 3 ? 0x2 : 0;
    v.setUint32(2048 + 32 * i + 4, 10 * i, true);
  }
  return b;
}

function namespaceFixture(): Uint8Array {
  const b = new Uint8Array(IDENTIFY_DATA_SIZE);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, 0x20_0000n, true);
  v.setBigUint64(8, 0x20_0000n, true);
  v.setBigUint64(16, 0x1_0000n, true);
  b[25] = 4; // NLBAF: five formats
  b[26] = 0x12; // FLBAS: format 2, extended metadata
  for (let i = 0; i < 5; i++) v.setUint32(128 + 4 * i, ((9 + i) << 16) | (i * 8) | ((i & 3) << 24), true);
  for (let i = 0; i < 16; i++) b[104 + i] = i * 17;
  return b;
}

function namespaceListFixture(): Uint8Array {
  const b = new Uint8Array(IDENTIFY_DATA_SIZE);
  const v = new DataView(b.buffer);
  for (let i = 0; i < 100; i++) v.setUint32(4 * i, 1 + 3 * i, true);
  return b;
}

function smartFixture(): Uint8Array {
  const b = new Uint8Array(SMART_LOG_SIZE);
  const v = new DataView(b.buffer);
  b[0] = 0x05;
  v.setUint16(1, 310, true);
  b[3] = 100;
  b[4] = 10;
  b[5] = 3;
  for (let o = 32; o < 192; o += 16) v.setBigUint64(o, BigInt(o) * 1000n, true);
  v.setUint16(200, 305, true);
  v.setUint16(202, 306, true);
  return b;
}

function errorLogFixture(entries: number): Uint8Array {
  const b = new Uint8Array(entries * ERROR_LOG_ENTRY_SIZE);
  const v = new DataView(b.buffer);
  for (let i = 0; i < entries; i++) {
    if (i % 3 === 2) continue; // leave some unused
    const o = i * ERROR_LOG_ENTRY_SIZE;
    v.setBigUint64(o, BigInt(100 - i), true);
    v.setUint16(o + 8, i, true);
    v.setUint16(o + 10, 0x100 + i, true);
    v.setUint16(o + 12, (encodeStatus({ sct: i & 7, sc: i * 5, dnr: i % 2 === 0 }) << 1) | (i & 1), true);
    v.setUint16(o + 14, i % 4 === 0 ? 0xffff : 0x52c, true);
    v.setBigUint64(o + 16, BigInt(i) << 20n, true);
    v.setUint32(o + 24, 1, true);
  }
  return b;
}

function fwSlotFixture(): Uint8Array {
  const b = new Uint8Array(FW_SLOT_LOG_SIZE);
  b[0] = 0x21;
  const put = (slot: number, s: string) => {
    for (let i = 0; i < 8; i++) b[8 * slot + i] = i < s.length ? s.charCodeAt(i) : 0x20;
  };
  put(1, "1.0.0");
  put(2, "2.0.1");
  return b;
}

// ---------------------------------------------------------------------------------------------
// Byte-input generators
// ---------------------------------------------------------------------------------------------

/** Copy `bytes` into a larger buffer at a random offset and return the view (byteOffset != 0 mostly). */
function embed(rng: Rng, bytes: Uint8Array): Uint8Array {
  const before = rng.int(0, 257);
  const after = rng.int(0, 300);
  const backing = rng.bytes(before + bytes.byteLength + after); // garbage around it, not zeros
  backing.set(bytes, before);
  return backing.subarray(before, before + bytes.byteLength);
}

/** Flip 1..64 random bytes (or bits) of a copy of `fixture`, sometimes only in the first `hot` bytes. */
function mutate(rng: Rng, fixture: Uint8Array, hot = fixture.byteLength): Uint8Array {
  const out = fixture.slice();
  const k = rng.int(1, 64);
  for (let j = 0; j < k; j++) {
    const at = rng.chance(0.5) ? rng.int(0, Math.max(0, hot - 1)) : rng.int(0, out.byteLength - 1);
    out[at] = rng.chance(0.5) ? rng.int(0, 255) : (out[at] ?? 0) ^ (1 << rng.int(0, 7));
  }
  return out;
}

/** A generic byte input for a parser whose structure is `size` bytes, built around `fixture`. */
function bytesInput(rng: Rng, fixture: () => Uint8Array, size: number, hot: number): Uint8Array {
  let data: Uint8Array;
  switch (rng.int(0, 7)) {
    case 0: // random bytes of random length
      data = rng.bytes(rng.int(0, 5000));
      break;
    case 1: // random bytes, length around the structure size
      data = rng.bytes(Math.max(0, size + rng.int(-8, 8)));
      break;
    case 2: // truncated fixture
      data = fixture().subarray(0, rng.int(0, size));
      break;
    case 3: // fixture with bytes flipped
    case 4:
      data = mutate(rng, fixture(), hot);
      break;
    case 5: // all ones, maybe with a tail
      data = new Uint8Array(size + (rng.chance(0.3) ? rng.int(1, 100) : 0)).fill(0xff);
      break;
    case 6: // all ones in the hot fields only
      data = fixture();
      data.fill(0xff, 0, hot);
      break;
    default: // fixture followed by garbage
      data = new Uint8Array(size + rng.int(1, 4096));
      data.set(rng.bytes(data.byteLength));
      data.set(fixture());
      break;
  }
  return rng.chance(0.5) ? embed(rng, data) : data;
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

function attempt<T>(f: () => T): Outcome<T> {
  try {
    return { ok: true, value: f() };
  } catch (error) {
    if (!isTyped(error)) throw error;
    return { ok: false, error };
  }
}

/**
 * Call `parse` on `data` and check its value; then check the parser read only the first `size`
 * bytes of its view: the same bytes copied to a fresh, exactly sized buffer at byteOffset 0 give
 * the same outcome (a parser ignoring byteOffset, or reading past the structure into whatever
 * follows it, fails this).
 */
function parseAndCompare<T>(data: Uint8Array, size: number, parse: (d: Uint8Array) => T, check: (v: T) => void): void {
  const got = attempt(() => parse(data));
  if (got.ok) check(got.value);
  const ref = attempt(() => parse(data.slice(0, Math.min(size, data.byteLength))));
  if (got.ok !== ref.ok) {
    fail(`outcome depends on the view: ${got.ok ? "value" : (got.error as Error).name} vs ${ref.ok ? "value" : (ref.error as Error).name} on a fresh copy`);
  }
  if (got.ok && ref.ok && !Bun.deepEquals(got.value, ref.value, true)) fail("value depends on byteOffset or on bytes past the structure");
  if (!got.ok) throw got.error;
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

const report: string[] = [];
function record(name: string, t: Tally): void {
  report.push(`${name}: ${t.cases} cases, ${t.values} values, ${t.typedErrors} typed errors`);
  expect(t.cases).toBeGreaterThan(0);
}

describe(`parsers never crash (seed ${SEED}, LIBNVM_FUZZ_SEED to override)`, () => {
  test("parseIdentifyController: every truncation 0..4096, random, mutated, all-ones, embedded", () => {
    const fixture = controllerFixture();
    // Every length of the valid structure, each also as a view at byteOffset 1.
    const trunc = property(
      "ctrl-trunc",
      IDENTIFY_DATA_SIZE + 1,
      (rng, i) => [i % 2 === 0 ? fixture.subarray(0, i) : embed(rng, fixture.subarray(0, i))] as const,
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseIdentifyController, checkController),
    );
    expect(trunc.values).toBe(1); // only the full 4096 bytes parse
    record("parseIdentifyController truncated", trunc);
    const t = property(
      "ctrl",
      n(6000),
      // Hot bytes: everything through the power state descriptors.
      (rng) => [bytesInput(rng, controllerFixture, IDENTIFY_DATA_SIZE, 3072)] as const,
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseIdentifyController, checkController),
    );
    expect(t.values).toBeGreaterThan(0);
    expect(t.typedErrors).toBeGreaterThan(0);
    record("parseIdentifyController", t);
    // NPSS at every value, in an exact page and in a page followed by more data.
    const npss = property(
      "ctrl-npss",
      512,
      (rng, i) => {
        const d = rng.chance(0.5) ? controllerFixture() : new Uint8Array(IDENTIFY_DATA_SIZE).fill(0xff);
        d[263] = i % 256;
        return [i < 256 ? d : embed(rng, d)] as const;
      },
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseIdentifyController, checkController),
    );
    expect(npss.values).toBe(512);
    record("parseIdentifyController NPSS 0..255", npss);
  });

  test("parseIdentifyNamespace: every truncation 0..4096, random, mutated, all-ones, NLBAF/FLBAS sweeps", () => {
    const fixture = namespaceFixture();
    const trunc = property(
      "ns-trunc",
      IDENTIFY_DATA_SIZE + 1,
      (rng, i) => [i % 2 === 0 ? fixture.subarray(0, i) : embed(rng, fixture.subarray(0, i))] as const,
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseIdentifyNamespace, checkNamespace),
    );
    expect(trunc.values).toBe(1);
    record("parseIdentifyNamespace truncated", trunc);
    const t = property(
      "ns",
      n(6000),
      (rng) => [bytesInput(rng, namespaceFixture, IDENTIFY_DATA_SIZE, 384)] as const,
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseIdentifyNamespace, checkNamespace),
    );
    expect(t.values).toBeGreaterThan(0);
    expect(t.typedErrors).toBeGreaterThan(0);
    record("parseIdentifyNamespace", t);
    // Every NLBAF x FLBAS pair over an active namespace whose formats are random.
    const sweep = property(
      "ns-nlbaf-flbas",
      256 * 256,
      (rng, i) => {
        const d = namespaceFixture();
        d.set(rng.bytes(256), 128);
        d[25] = i >>> 8;
        d[26] = i & 0xff;
        return [d] as const;
      },
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseIdentifyNamespace, checkNamespace),
    );
    expect(sweep.values).toBeGreaterThan(0);
    record("parseIdentifyNamespace NLBAF x FLBAS", sweep);
  });

  test("parseNamespaceList", () => {
    const trunc = property(
      "nslist-trunc",
      IDENTIFY_DATA_SIZE + 1,
      (rng, i) => [embed(rng, namespaceListFixture().subarray(0, i))] as const,
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseNamespaceList, (l) => checkNamespaceList(l, d)),
    );
    expect(trunc.values).toBe(1);
    record("parseNamespaceList truncated", trunc);
    const t = property(
      "nslist",
      n(4000),
      (rng) => [bytesInput(rng, namespaceListFixture, IDENTIFY_DATA_SIZE, 4096)] as const,
      (d) => parseAndCompare(d, IDENTIFY_DATA_SIZE, parseNamespaceList, (l) => checkNamespaceList(l, d)),
    );
    expect(t.values).toBeGreaterThan(0);
    record("parseNamespaceList", t);
  });

  test("parseSmartLog", () => {
    const trunc = property(
      "smart-trunc",
      SMART_LOG_SIZE + 1,
      (rng, i) => [embed(rng, smartFixture().subarray(0, i))] as const,
      (d) => parseAndCompare(d, SMART_LOG_SIZE, parseSmartLog, checkSmart),
    );
    expect(trunc.values).toBe(1);
    record("parseSmartLog truncated", trunc);
    const t = property(
      "smart",
      n(5000),
      (rng) => [bytesInput(rng, smartFixture, SMART_LOG_SIZE, 232)] as const,
      (d) => parseAndCompare(d, SMART_LOG_SIZE, parseSmartLog, checkSmart),
    );
    expect(t.values).toBeGreaterThan(0);
    expect(t.typedErrors).toBeGreaterThan(0);
    record("parseSmartLog", t);
  });

  test("parseErrorLog, including random entry counts (0, negative, huge, fractional, NaN)", () => {
    const fixture = errorLogFixture(16);
    const trunc = property(
      "errlog-trunc",
      fixture.byteLength + 1,
      (rng, i) => [embed(rng, fixture.subarray(0, i)), rng.chance(0.5) ? undefined : rng.int(0, 17)] as const,
      (d, entries) => checkErrorLog(entries === undefined ? parseErrorLog(d) : parseErrorLog(d, entries), d, entries),
    );
    expect(trunc.values).toBeGreaterThan(0);
    expect(trunc.typedErrors).toBeGreaterThan(0);
    record("parseErrorLog truncated", trunc);
    const t = property(
      "errlog",
      n(6000),
      (rng) => {
        const size = rng.pick([64, 128, 256, 1024, 4096]);
        const d = bytesInput(rng, () => errorLogFixture(size / 64), size, size);
        const whole = Math.floor(d.byteLength / ERROR_LOG_ENTRY_SIZE);
        const entries = rng.pick<number | undefined>([
          undefined,
          0,
          whole,
          Math.max(0, whole - rng.int(0, 3)),
          whole + 1,
          rng.int(0, 80),
          rng.weird(),
          rng.weird(),
        ]);
        return [d, entries] as const;
      },
      (d, entries) => {
        const got = entries === undefined ? parseErrorLog(d) : parseErrorLog(d, entries);
        checkErrorLog(got, d, entries);
        // Same entries from a fresh copy of exactly the bytes the count covers.
        const asked = entries ?? Math.floor(d.byteLength / ERROR_LOG_ENTRY_SIZE);
        const ref = parseErrorLog(d.slice(0, asked * ERROR_LOG_ENTRY_SIZE), asked);
        if (!Bun.deepEquals(got, ref, true)) fail("error log depends on byteOffset or on bytes past the entries");
      },
    );
    expect(t.values).toBeGreaterThan(0);
    expect(t.typedErrors).toBeGreaterThan(0);
    record("parseErrorLog", t);
  });

  test("parseFirmwareSlotLog", () => {
    const trunc = property(
      "fw-trunc",
      FW_SLOT_LOG_SIZE + 1,
      (rng, i) => [embed(rng, fwSlotFixture().subarray(0, i))] as const,
      (d) => parseAndCompare(d, FW_SLOT_LOG_SIZE, parseFirmwareSlotLog, checkFwSlot),
    );
    expect(trunc.values).toBe(1);
    record("parseFirmwareSlotLog truncated", trunc);
    const t = property(
      "fw",
      n(4000),
      (rng) => [bytesInput(rng, fwSlotFixture, FW_SLOT_LOG_SIZE, 64)] as const,
      (d) => parseAndCompare(d, FW_SLOT_LOG_SIZE, parseFirmwareSlotLog, checkFwSlot),
    );
    expect(t.values).toBeGreaterThan(0);
    record("parseFirmwareSlotLog", t);
  });

  test("decodeStatus: completion DW3 from random bytes, and random numbers", () => {
    const cqe = property(
      "status-cqe",
      n(10000),
      (rng) => [embed(rng, rng.bytes(16))] as const,
      (entry) => {
        const dw3 = new DataView(entry.buffer, entry.byteOffset, 16).getUint32(12, true);
        const s = decodeStatus(dw3 >>> 17);
        checkShape("CompletionStatus", s, STATUS_SCHEMA);
        if (encodeStatus(s) !== dw3 >>> 17) fail(`decodeStatus(${dw3 >>> 17}) does not encode back`);
        for (const str of [statusName(s.sct, s.sc), statusTypeName(s.sct)]) {
          if (typeof str !== "string" || str.length === 0 || /NaN|undefined/.test(str)) fail(`status text ${describeValue(str)}`);
        }
      },
    );
    expect(cqe.typedErrors).toBe(0);
    record("decodeStatus (CQE DW3)", cqe);
    const t = property(
      "status-number",
      n(10000),
      (rng) => [rng.weird()] as const,
      (x) => {
        const s = decodeStatus(x);
        checkShape("CompletionStatus", s, STATUS_SCHEMA);
        if (encodeStatus(s) !== x) fail(`decodeStatus accepted ${x}, which is not a 15-bit status`);
      },
    );
    expect(t.values).toBeGreaterThan(0);
    expect(t.typedErrors).toBeGreaterThan(0);
    record("decodeStatus (numbers)", t);
  });

  test("statusName / statusTypeName always return text, even for impossible SCT / SC", () => {
    const t = property(
      "status-names",
      n(10000),
      (rng) => [rng.chance(0.3) ? rng.int(0, 7) : rng.weird(), rng.chance(0.3) ? rng.int(0, 255) : rng.weird()] as const,
      (sct, sc) => {
        // Used while constructing NvmeStatusError: not even a typed error is acceptable here.
        let name: unknown, type: unknown;
        try {
          name = statusName(sct, sc);
          type = statusTypeName(sct);
        } catch (e) {
          fail(`threw ${(e as Error).name}: ${(e as Error).message}`);
        }
        if (typeof name !== "string" || name.length === 0) fail(`statusName = ${describeValue(name)}`);
        if (typeof type !== "string" || type.length === 0) fail(`statusTypeName = ${describeValue(type)}`);
        const valid = Number.isInteger(sct) && sct >= 0 && sct <= 7 && Number.isInteger(sc) && sc >= 0 && sc <= 255;
        if (valid && (/NaN|undefined/.test(name + type) || name.startsWith("Invalid status code") || type === "invalid")) fail(`valid status named ${describeValue(name)} / ${describeValue(type)}`);
      },
    );
    expect(t.values).toBe(t.cases);
    record("statusName / statusTypeName", t);
  });

  test("register decoders: random u32s, negative, wider than 32 bits, fractions, NaN", () => {
    const reg = (rng: Rng) => (rng.chance(0.5) ? rng.u32() : rng.weird());
    const isReg = (x: number) => Number.isInteger(x) && x >= -(2 ** 31) && x <= 0xffffffff;
    const cap = property(
      "cap",
      n(10000),
      (rng) => [reg(rng), reg(rng)] as const,
      (lo, hi) => {
        const c = decodeCap(lo, hi);
        const o = checkShape("Capabilities", c, {
          mqes: "u16",
          cqr: "bool",
          ams: "u2",
          to: "u8",
          dstrd: "u4",
          nssrs: "bool",
          css: "u8",
          bps: "bool",
          mpsmin: "u4",
          mpsmax: "u4",
          pmrs: "bool",
          cmbs: "bool",
          timeoutMs: "skip",
          minPageSize: "skip",
          maxPageSize: "skip",
          raw: "u64n",
        });
        if (o.timeoutMs !== c.to * 500) fail(`timeoutMs ${o.timeoutMs}`);
        if (!isPow2(c.minPageSize, 4096, 2 ** 27) || c.minPageSize !== 2 ** (12 + c.mpsmin)) fail(`minPageSize ${c.minPageSize}`);
        if (!isPow2(c.maxPageSize, 4096, 2 ** 27) || c.maxPageSize !== 2 ** (12 + c.mpsmax)) fail(`maxPageSize ${c.maxPageSize}`);
        if (!isReg(lo) || !isReg(hi)) fail(`decodeCap accepted (${lo}, ${hi})`);
        if (c.raw !== ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0))) fail(`raw ${c.raw}`);
        // mdtsBytes gets CAP.MPSMIN from here.
        const m = mdtsBytes((lo >>> 0) & 0xff, c.minPageSize);
        if (m !== null && (!Number.isSafeInteger(m) || m < c.minPageSize)) fail(`mdtsBytes ${m}`);
      },
    );
    expect(cap.values).toBeGreaterThan(0);
    expect(cap.typedErrors).toBeGreaterThan(0);
    record("decodeCap", cap);

    const one = (name: string, f: (x: number) => void) => {
      const t = property(name, n(6000), (rng) => [reg(rng)] as const, (x) => {
        f(x);
        if (!isReg(x)) fail(`${name} accepted ${x}`);
      });
      expect(t.values).toBeGreaterThan(0);
      expect(t.typedErrors).toBeGreaterThan(0);
      record(name, t);
    };
    one("decodeCsts", (x) => checkShape("ControllerStatus", decodeCsts(x), { rdy: "bool", cfs: "bool", shst: "u2", nssro: "bool", pp: "bool" }));
    one("decodeCc", (x) => {
      const c = decodeCc(x);
      checkShape("ControllerConfig", c, { en: "bool", css: "u3", mps: "u4", ams: "u3", shn: "u2", iosqes: "u4", iocqes: "u4" });
      if (encodeCc(c) !== ((x >>> 0) & 0x00ffffff & ~0b1110)) fail(`encodeCc(decodeCc(${x})) = ${encodeCc(c)}`);
    });
    one("decodeVersion", (x) => checkShape("Version", decodeVersion(x), { mjr: "u16", mnr: "u8", ter: "u8" }));
    one("decodeAqa", (x) => {
      const a = decodeAqa(x);
      checkShape("AQA", a, { asqs: "skip", acqs: "skip" });
      for (const q of [a.asqs, a.acqs]) if (!Number.isInteger(q) || q < 1 || q > 4096) fail(`AQA queue size ${q}`);
    });
    one("formatVersion", (x) => {
      const s = formatVersion(x);
      const v = decodeVersion(x);
      if (s !== `${v.mjr}.${v.mnr}.${v.ter}`) fail(`formatVersion(${x}) = ${describeValue(s)}`);
    });
  });

  test("mdtsBytes: MDTS 0..255 (and worse) with any page size", () => {
    const t = property(
      "mdts",
      n(10000),
      (rng) =>
        [
          rng.chance(0.7) ? rng.int(0, 255) : rng.weird(),
          rng.chance(0.6) ? 2 ** rng.int(12, 27) : rng.chance(0.5) ? 2 ** rng.int(0, 60) : rng.weird(),
        ] as const,
      (mdts, mps) => {
        const m = mdtsBytes(mdts, mps);
        if (m === null) {
          if (mdts !== 0 && Number.isSafeInteger(mps * 2 ** mdts)) fail(`null for a representable limit`);
          return;
        }
        if (!Number.isSafeInteger(m) || m !== mps * 2 ** mdts) fail(`mdtsBytes(${mdts}, ${mps}) = ${m}`);
        if (!Number.isInteger(mdts) || mdts < 1 || mdts > 255) fail(`accepted MDTS ${mdts}`);
      },
    );
    expect(t.values).toBeGreaterThan(0);
    expect(t.typedErrors).toBeGreaterThan(0);
    record("mdtsBytes", t);
  });

  test("getLogPageDwords / getLogPageCdws: random LIDs, lengths, offsets, LSP, LSI", () => {
    const len = (rng: Rng) =>
      rng.pick([rng.weird(), 4 * rng.int(1, 0xffffffff), 4 * rng.int(1, 4096), 2 ** 34, 2 ** 34 + 4, rng.int(-8, 8)]);
    const dw = property(
      "getLogPageDwords",
      n(10000),
      (rng) => [rng.chance(0.7) ? rng.int(0, 255) : rng.weird(), len(rng)] as const,
      (lid, byteLength) => {
        const r = getLogPageDwords(lid, byteLength);
        checkShape("NUMD", r, { numdl: "u16", numdu: "u16" });
        if ((r.numdu * 0x10000 + r.numdl + 1) * 4 !== byteLength) fail(`NUMD ${r.numdu}:${r.numdl} for ${byteLength}`);
      },
    );
    expect(dw.values).toBeGreaterThan(0);
    expect(dw.typedErrors).toBeGreaterThan(0);
    record("getLogPageDwords", dw);
    const cdws = property(
      "getLogPageCdws",
      n(10000),
      (rng) => {
        const opts: { -readonly [K in keyof GetLogPageOptions]: GetLogPageOptions[K] } = {
          lid: rng.chance(0.8) ? rng.int(0, 255) : rng.weird(),
          byteLength: len(rng),
        };
        if (rng.chance(0.5)) opts.lsp = rng.chance(0.7) ? rng.int(0, 127) : rng.weird();
        if (rng.chance(0.5)) opts.lsi = rng.chance(0.7) ? rng.int(0, 0xffff) : rng.weird();
        if (rng.chance(0.5)) opts.rae = rng.chance(0.5);
        if (rng.chance(0.5)) opts.offset = rng.chance(0.6) ? 4 * rng.int(0, 2 ** 32) * rng.pick([1, 4096]) : rng.weird();
        return [opts] as const;
      },
      (opts) => {
        const c = getLogPageCdws(opts);
        checkShape("CDWs", c, { cdw10: "u32", cdw11: "u32", cdw12: "u32", cdw13: "u32" });
        const numd = ((c.cdw11 & 0xffff) * 0x10000 + (c.cdw10 >>> 16) + 1) * 4;
        if ((c.cdw10 & 0xff) !== opts.lid || ((c.cdw10 >>> 8) & 0x7f) !== (opts.lsp ?? 0) || c.cdw11 >>> 16 !== (opts.lsi ?? 0)) fail("LID/LSP/LSI");
        if (((c.cdw10 >>> 15) & 1) !== (opts.rae ? 1 : 0) || numd !== opts.byteLength) fail("RAE/NUMD");
        if (c.cdw13 * 2 ** 32 + c.cdw12 !== (opts.offset ?? 0)) fail("offset");
      },
    );
    expect(cdws.values).toBeGreaterThan(0);
    expect(cdws.typedErrors).toBeGreaterThan(0);
    record("getLogPageCdws", cdws);
  });

  test("summary", () => {
    // Printed so a run shows how much was fuzzed; `bun test` shows console output.
    console.log(
      `fuzz seed ${SEED}: ${totals.cases} inputs in ${totals.ms.toFixed(0)} ms\n  ${report.join("\n  ")}`,
    );
    expect(totals.cases).toBeGreaterThan(10000);
  });
});
