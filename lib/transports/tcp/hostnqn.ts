/**
 * The host's identity on NVMe over Fabrics: its NQN (HOSTNQN) and Host Identifier (HOSTID, a
 * 16-byte UUID), sent in every Connect. Targets grant access by HOSTNQN (nvmet's allowed_hosts),
 * and a controller's queues must all carry the same pair, so it must not change between runs:
 *
 *   1. given explicitly (ControllerOptions hostnqn / hostid, or ?hostnqn= in the address);
 *   2. /etc/nvme/hostnqn and /etc/nvme/hostid, what nvme-cli and the kernel's host use;
 *   3. otherwise one generated once, nqn.2014-08.org.nvmexpress:uuid:<uuid> (Base 2.0, 4.5), kept in
 *      $XDG_CONFIG_HOME/libnvm/hostnqn (~/.config/libnvm/hostnqn) and read back next time.
 *
 * HOSTID: the given or stored one; for a UUID NQN, its UUID; else a UUID derived from the NQN
 * (SHA-256), so one NQN always comes with the same HOSTID.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { InvalidArgumentError } from "../../errors.ts";

export interface HostIdentity {
  readonly hostnqn: string;
  /** 16 bytes. */
  readonly hostid: Uint8Array;
  /** Where the NQN came from: "option", "/etc/nvme/hostnqn", the file it was stored in, or "generated (not stored: ...)". */
  readonly source: string;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function uuidBytes(uuid: string): Uint8Array {
  if (!UUID_RE.test(uuid)) throw new InvalidArgumentError(`host ID "${uuid}" is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)`);
  const hex = uuid.replaceAll("-", "");
  return Uint8Array.from({ length: 16 }, (_, i) => Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

export function uuidString(b: Uint8Array): string {
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function readTrimmed(path: string): string | undefined {
  try {
    const s = readFileSync(path, "utf8").trim();
    return s === "" ? undefined : s;
  } catch {
    return undefined;
  }
}

/** The HOSTID that goes with `nqn` when none was given: its UUID, or one derived from it. */
function hostIdFor(nqn: string): Uint8Array {
  const m = /:uuid:([0-9a-f-]{36})$/i.exec(nqn);
  if (m && UUID_RE.test(m[1]!)) return uuidBytes(m[1]!);
  const h = new Bun.CryptoHasher("sha256").update(nqn).digest();
  const b = Uint8Array.from(h.subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x80; // version 8 (custom), RFC 9562
  b[8] = (b[8]! & 0x3f) | 0x80; // variant 10
  return b;
}

function configFile(): string {
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), ".config");
  return join(base, "libnvm", "hostnqn");
}

let cachedGenerated: HostIdentity | undefined;

/** The host identity to connect with (see the module comment for the order). */
export function hostIdentity(opts: { hostnqn?: string; hostid?: string } = {}): HostIdentity {
  if (opts.hostnqn !== undefined) {
    if (!/^nqn\.\d{4}-\d{2}\./.test(opts.hostnqn)) throw new InvalidArgumentError(`host NQN "${opts.hostnqn}" is not an NQN (nqn.yyyy-mm.reverse.domain:name)`);
    return { hostnqn: opts.hostnqn, hostid: opts.hostid !== undefined ? uuidBytes(opts.hostid) : hostIdFor(opts.hostnqn), source: "option" };
  }
  const etc = readTrimmed("/etc/nvme/hostnqn");
  if (etc !== undefined) {
    const id = opts.hostid ?? readTrimmed("/etc/nvme/hostid");
    return { hostnqn: etc, hostid: id !== undefined && UUID_RE.test(id) ? uuidBytes(id) : hostIdFor(etc), source: "/etc/nvme/hostnqn" };
  }
  const file = configFile();
  const stored = readTrimmed(file);
  if (stored !== undefined && /^nqn\.\d{4}-\d{2}\./.test(stored)) {
    return { hostnqn: stored, hostid: opts.hostid !== undefined ? uuidBytes(opts.hostid) : hostIdFor(stored), source: file };
  }
  if (cachedGenerated) return cachedGenerated;
  const uuid = crypto.randomUUID();
  const hostnqn = `nqn.2014-08.org.nvmexpress:uuid:${uuid}`;
  let source = file;
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
    writeFileSync(file, `${hostnqn}\n`, { mode: 0o644, flag: "wx" });
  } catch (e) {
    // Another process may have written it first: use theirs, so both agree.
    const theirs = readTrimmed(file);
    if (theirs !== undefined && /^nqn\.\d{4}-\d{2}\./.test(theirs)) return { hostnqn: theirs, hostid: hostIdFor(theirs), source: file };
    source = `generated (not stored: ${(e as Error).message}; set hostnqn= to keep one)`;
  }
  cachedGenerated = { hostnqn, hostid: opts.hostid !== undefined ? uuidBytes(opts.hostid) : uuidBytes(uuid), source };
  return cachedGenerated;
}
