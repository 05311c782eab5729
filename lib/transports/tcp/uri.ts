/**
 * Addresses of NVMe/TCP controllers, one string per controller:
 *
 *   nvme+tcp://HOST[:PORT]/SUBNQN[?OPTIONS]   an NVM subsystem (port 4420 unless given)
 *   nvme+tcp://HOST[:PORT][/]                 the target's discovery controller (port 8009 unless given)
 *   nvme+tcp://HOST[:PORT]/discovery          the same, explicitly (or /nqn.2014-08.org.nvmexpress.discovery)
 *   trtype:TCP adrfam:IPv4 traddr:HOST trsvcid:PORT subnqn:SUBNQN   (SPDK's transport ID)
 *
 * HOST is a name, an IPv4 address or an IPv6 address in brackets. OPTIONS take nvme-cli's names
 * (with - or _): hostnqn, hostid, hdr-digest (hdgst), data-digest (ddgst), nr-io-queues,
 * queue-size, keep-alive-tmo (seconds; kato in milliseconds), disable-sqflow, reconnect-delay
 * (seconds), nr-reconnects, connect-timeout (ms), nsid (a default namespace for tools).
 */
import { InvalidArgumentError } from "../../errors.ts";
import { DISCOVERY_NQN, NQN_MAX } from "../../spec/fabrics.ts";

/** The IANA port of NVMe/TCP I/O controllers. */
export const NVME_TCP_PORT = 4420;
/** The IANA port of NVMe/TCP discovery controllers. */
export const NVME_TCP_DISCOVERY_PORT = 8009;

export interface TcpTarget {
  readonly host: string;
  readonly port: number;
  /** The subsystem's NQN; DISCOVERY_NQN for a discovery controller. */
  readonly subnqn: string;
  readonly discovery: boolean;
  /** Options given in the address (query string, or SPDK's extra keys). */
  readonly options: TcpUriOptions;
}

/** What an address may carry besides host, port and NQN (see uri.ts's header for the names). */
export interface TcpUriOptions {
  readonly hostnqn?: string;
  readonly hostid?: string;
  readonly headerDigest?: boolean;
  readonly dataDigest?: boolean;
  readonly nrIoQueues?: number;
  readonly queueSize?: number;
  readonly keepAliveTimeoutMs?: number;
  readonly disableSqFlowControl?: boolean;
  readonly reconnectDelayMs?: number;
  readonly reconnectAttempts?: number;
  readonly connectTimeoutMs?: number;
  readonly nsid?: number;
}

/** True when `s` names an NVMe/TCP controller (nvme+tcp:// or SPDK's trtype:TCP form). */
export function isTcpTarget(s: string): boolean {
  return /^nvme\+tcp:\/\//i.test(s) || /(^|\s)trtype:tcp(\s|$)/i.test(s);
}

function bool(name: string, v: string): boolean {
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off)$/i.test(v)) return false;
  throw new InvalidArgumentError(`option ${name}=${v}: give 1 or 0 (true or false)`);
}

function int(name: string, v: string, min: number, max: number): number {
  const n = /^(0x[0-9a-f]+|\d+)$/i.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`option ${name}=${v}: an integer from ${min} to ${max}`);
  return n;
}

/** Options by nvme-cli's names ("-" or "_"), plus the short forms. */
function parseOptions(pairs: Iterable<[string, string]>, where: string): TcpUriOptions {
  const o: Record<string, unknown> = {};
  for (const [rawKey, v] of pairs) {
    const k = rawKey.toLowerCase().replaceAll("_", "-");
    switch (k) {
      case "hostnqn":
        o.hostnqn = v;
        break;
      case "hostid":
        o.hostid = v;
        break;
      case "hdr-digest":
      case "hdgst":
        o.headerDigest = bool(k, v);
        break;
      case "data-digest":
      case "ddgst":
        o.dataDigest = bool(k, v);
        break;
      case "nr-io-queues":
        o.nrIoQueues = int(k, v, 1, 65535);
        break;
      case "queue-size":
        o.queueSize = int(k, v, 2, 65536);
        break;
      case "keep-alive-tmo":
        o.keepAliveTimeoutMs = int(k, v, 0, 4294967) * 1000;
        break;
      case "kato":
        o.keepAliveTimeoutMs = int(k, v, 0, 0xffffffff);
        break;
      case "disable-sqflow":
        o.disableSqFlowControl = bool(k, v);
        break;
      case "reconnect-delay":
        o.reconnectDelayMs = int(k, v, 0, 3600) * 1000;
        break;
      case "nr-reconnects":
        o.reconnectAttempts = int(k, v, 0, 1000);
        break;
      case "connect-timeout":
        o.connectTimeoutMs = int(k, v, 1, 600_000);
        break;
      case "nsid":
        o.nsid = int(k, v, 1, 0xfffffffe);
        break;
      default:
        throw new InvalidArgumentError(
          `${where}: unknown option "${rawKey}" (known: hostnqn, hostid, hdr-digest, data-digest, nr-io-queues, queue-size, keep-alive-tmo, kato, disable-sqflow, reconnect-delay, nr-reconnects, connect-timeout, nsid)`,
        );
    }
  }
  return o as TcpUriOptions;
}

function checkNqn(nqn: string, where: string): void {
  if (nqn.length === 0) throw new InvalidArgumentError(`${where}: the subsystem NQN is empty`);
  if (new TextEncoder().encode(nqn).length > NQN_MAX) throw new InvalidArgumentError(`${where}: NQN "${nqn}" is longer than ${NQN_MAX} bytes`);
  // NVMe Base 2.0, 4.5: "nqn.yyyy-mm.reverse-domain:..." or the UUID form; the discovery NQN too.
  if (!/^nqn\.\d{4}-\d{2}\.[^\s:]+/.test(nqn)) throw new InvalidArgumentError(`${where}: "${nqn}" is not an NQN (nqn.yyyy-mm.reverse.domain:name)`);
}

function hostPort(host: string, port: string | undefined, dflt: number, where: string): { host: string; port: number } {
  if (host === "") throw new InvalidArgumentError(`${where}: no host`);
  if (host.startsWith("[")) {
    if (!host.endsWith("]")) throw new InvalidArgumentError(`${where}: unterminated IPv6 address`);
    host = host.slice(1, -1);
  }
  const p = port === undefined || port === "" ? dflt : Number(port);
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw new InvalidArgumentError(`${where}: port ${port} is not 1 to 65535`);
  return { host, port: p };
}

/** Parse an NVMe/TCP address; InvalidArgumentError naming what is wrong. */
export function parseTcpTarget(s: string): TcpTarget {
  const where = `"${s}"`;
  if (!/^nvme\+tcp:\/\//i.test(s)) return parseSpdk(s);
  const m = /^nvme\+tcp:\/\/(\[[^\]]*\]|[^/:?#[\]]*)(?::(\d*))?(\/[^?#]*)?(?:\?([^#]*))?$/i.exec(s);
  if (!m) throw new InvalidArgumentError(`${where} is not nvme+tcp://HOST[:PORT]/SUBNQN[?options]`);
  const path = decodeURIComponent((m[3] ?? "").replace(/^\//, "").replace(/\/$/, ""));
  const discovery = path === "" || path === "discovery" || path === DISCOVERY_NQN;
  const { host, port } = hostPort(m[1]!, m[2], discovery ? NVME_TCP_DISCOVERY_PORT : NVME_TCP_PORT, where);
  const subnqn = discovery ? DISCOVERY_NQN : path;
  if (!discovery) checkNqn(subnqn, where);
  const options = parseOptions(new URLSearchParams(m[4] ?? ""), where);
  return { host, port, subnqn, discovery, options };
}

/** SPDK's transport ID: "trtype:TCP adrfam:IPv4 traddr:10.0.0.5 trsvcid:4420 subnqn:nqn...". */
function parseSpdk(s: string): TcpTarget {
  const where = `"${s}"`;
  const kv = new Map<string, string>();
  for (const part of s.trim().split(/\s+/)) {
    const i = part.indexOf(":");
    if (i < 1) throw new InvalidArgumentError(`${where}: "${part}" is not key:value`);
    kv.set(part.slice(0, i).toLowerCase(), part.slice(i + 1));
  }
  if ((kv.get("trtype") ?? "").toLowerCase() !== "tcp") throw new InvalidArgumentError(`${where}: trtype must be TCP`);
  const traddr = kv.get("traddr");
  if (!traddr) throw new InvalidArgumentError(`${where}: traddr is missing`);
  const adrfam = (kv.get("adrfam") ?? "ipv4").toLowerCase();
  if (adrfam !== "ipv4" && adrfam !== "ipv6") throw new InvalidArgumentError(`${where}: adrfam ${adrfam}: IPv4 or IPv6`);
  const sub = kv.get("subnqn");
  const discovery = sub === undefined || sub === DISCOVERY_NQN;
  const { host, port } = hostPort(traddr, kv.get("trsvcid"), discovery ? NVME_TCP_DISCOVERY_PORT : NVME_TCP_PORT, where);
  const subnqn = discovery ? DISCOVERY_NQN : sub!;
  if (!discovery) checkNqn(subnqn, where);
  const rest = [...kv].filter(([k]) => !["trtype", "adrfam", "traddr", "trsvcid", "subnqn"].includes(k));
  return { host, port, subnqn, discovery, options: parseOptions(rest, where) };
}

/** The nvme+tcp:// address of a controller. */
export function formatTcpTarget(t: { host: string; port: number; subnqn?: string }): string {
  const host = t.host.includes(":") ? `[${t.host}]` : t.host;
  const path = t.subnqn === undefined || t.subnqn === DISCOVERY_NQN ? "" : `/${t.subnqn}`;
  return `nvme+tcp://${host}:${t.port}${path}`;
}
