/**
 * Completion status: the Status Field of a Completion Queue Entry, decoded and encoded, and the
 * names the NVMe Base Specification 2.0 gives each Status Code Type (SCT) / Status Code (SC) pair
 * (status-names.ts, re-exported here).
 */
import { InvalidArgumentError } from "../errors.ts";

export * from "./status-names.ts";

// ---------------------------------------------------------------------------------------------
// Status Field decoding
// ---------------------------------------------------------------------------------------------

/** The Status Field of a completion, split into its parts (Base 2.0 figure "Completion Queue Entry: Status Field"). */
export interface CompletionStatus {
  /** Status Code Type, bits 10:8 of the 15-bit field. */
  readonly sct: number;
  /** Status Code, bits 7:0. */
  readonly sc: number;
  /** Command Retry Delay, bits 12:11: 0 = retry at once, 1-3 select Identify Controller CRDT1-CRDT3. */
  readonly crd: number;
  /** More (M), bit 13: the Error Information log page holds more about this failure. */
  readonly more: boolean;
  /** Do Not Retry (DNR), bit 14: the same command would fail again. */
  readonly dnr: boolean;
}

/** Largest 15-bit Status Field. */
const STATUS_FIELD_MAX = 0x7fff;

/**
 * Decode the 15-bit Status Field, i.e. CQE DW3 >>> 17 (the phase tag, DW3 bit 16, already
 * dropped). Bit 0 of `status15` is SC bit 0.
 *
 * Throws InvalidArgumentError unless `status15` is an integer in 0..7FFFh: NaN would otherwise
 * decode as Successful Completion, and a 16-bit value (DW3 >>> 16, phase tag still in bit 0)
 * would decode every field one bit off.
 */
export function decodeStatus(status15: number): CompletionStatus {
  if (!Number.isInteger(status15) || status15 < 0 || status15 > STATUS_FIELD_MAX) {
    throw new InvalidArgumentError(
      `Status Field ${status15} is not an integer in 0..0x7fff; pass CQE DW3 >>> 17 (bits 31:17, phase tag dropped)`,
    );
  }
  return {
    sc: status15 & 0xff,
    sct: (status15 >>> 8) & 0x7,
    crd: (status15 >>> 11) & 0x3,
    more: ((status15 >>> 13) & 1) === 1,
    dnr: ((status15 >>> 14) & 1) === 1,
  };
}

/** Build a 15-bit Status Field from its parts; the inverse of decodeStatus (used by tests and fakes). */
export function encodeStatus(s: {
  sct: number;
  sc: number;
  crd?: number;
  more?: boolean;
  dnr?: boolean;
}): number {
  return (
    (s.sc & 0xff) |
    ((s.sct & 0x7) << 8) |
    (((s.crd ?? 0) & 0x3) << 11) |
    (s.more ? 1 << 13 : 0) |
    (s.dnr ? 1 << 14 : 0)
  );
}

/** True when SCT and SC are both zero (Successful Completion); CRD/M/DNR do not matter. */
export function isSuccess(status15: number): boolean {
  return (status15 & 0x7ff) === 0;
}
