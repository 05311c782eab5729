/**
 * discover: the Discovery Log Page of an NVMe/TCP target (nvme+tcp://HOST[:PORT], port 8009 by
 * default): every subsystem and referral it offers this host, in nvme-cli's `nvme discover` layout
 * and JSON, each with the address that opens it.
 */
import type { DiscoveryRecord, DiscoveryResult } from "../../lib/transports/tcp/transport.ts";
import { OUTPUT_OPTIONS, type Command, type Context } from "../cli.ts";
import { UsageError } from "../common.ts";
import { printJson, type JsonValue } from "../json.ts";

const TRTYPE: Record<number, string> = { 1: "rdma", 2: "fc", 3: "tcp", 0xfe: "loop" };
const ADRFAM: Record<number, string> = { 1: "ipv4", 2: "ipv6", 3: "infiniband", 4: "fibre-channel", 0xfe: "intra-host" };
const SUBTYPE: Record<number, string> = { 1: "discovery subsystem referral", 2: "nvme subsystem", 3: "current discovery subsystem" };
const SECTYPE: Record<number, string> = { 0: "none", 1: "tls1.2", 2: "tls1.3" };

/** TREQ as nvme-cli words it: the secure channel requirement, and whether SQ flow control may be disabled. */
function treq(t: number): string {
  const sc = ["not specified", "required", "not required", "reserved"][t & 3]!;
  return (t & 4) !== 0 ? `${sc}, sq flow control disable supported` : sc;
}

function name(table: Record<number, string>, v: number): string {
  return table[v] ?? `unrecognized (${v})`;
}

export function discoveryText(d: DiscoveryResult): string {
  const out = [`Discovery Log Number of Records ${d.records.length}, Generation counter ${d.genctr}`];
  d.records.forEach((r, i) => {
    out.push(
      `=====Discovery Log Entry ${i}======`,
      `trtype:  ${name(TRTYPE, r.trtype)}`,
      `adrfam:  ${name(ADRFAM, r.adrfam)}`,
      `subtype: ${name(SUBTYPE, r.subtype)}`,
      `treq:    ${treq(r.treq)}`,
      `portid:  ${r.portid}`,
      `trsvcid: ${r.trsvcid}`,
      `subnqn:  ${r.subnqn}`,
      `traddr:  ${r.traddr}`,
      `eflags:  ${r.eflags === 0 ? "none" : `0x${r.eflags.toString(16)}`}`,
      `sectype: ${name(SECTYPE, r.sectype)}`,
      `uri:     ${r.uri}`,
    );
  });
  return out.join("\n") + "\n";
}

function recordJson(r: DiscoveryRecord): JsonValue {
  return {
    trtype: name(TRTYPE, r.trtype),
    adrfam: name(ADRFAM, r.adrfam),
    subtype: name(SUBTYPE, r.subtype),
    treq: treq(r.treq),
    portid: r.portid,
    trsvcid: r.trsvcid,
    subnqn: r.subnqn,
    traddr: r.traddr,
    eflags: r.eflags === 0 ? "none" : `0x${r.eflags.toString(16)}`,
    sectype: name(SECTYPE, r.sectype),
    uri: r.uri,
  };
}

export function discoveryJson(d: DiscoveryResult): JsonValue {
  return { genctr: Number(d.genctr), records: d.records.map(recordJson) };
}

/** Run discovery on the device argument (an nvme+tcp:// address); UsageError for anything else. */
export async function runDiscovery(ctx: Context): Promise<DiscoveryResult> {
  const { isTcpTarget } = await import("../../lib/transports/tcp/uri.ts");
  if (!isTcpTarget(ctx.device)) throw new UsageError(`${ctx.device}: discovery needs an NVMe/TCP target, nvme+tcp://HOST[:PORT]`);
  const { Controller } = await import("../../lib/controller.ts");
  const timeoutMs = ctx.int("timeout");
  return Controller.discover(ctx.device, { handleSignals: false, ...(timeoutMs ? { timeoutMs } : {}) });
}

export const discover: Command = {
  name: "discover",
  summary: "the subsystems an NVMe/TCP target offers (its Discovery Log Page)",
  description:
    "Connects to the discovery controller of <device>, an NVMe/TCP target given as nvme+tcp://HOST[:PORT] (port 8009\n" +
    "unless given), reads the Discovery Log Page and prints each record in nvme discover's layout, with the\n" +
    "nvme+tcp:// address that opens it (libnvm id-ctrl nvme+tcp://HOST:PORT/SUBNQN). -o json prints nvme-cli's\n" +
    "JSON (genctr, records) with a \"uri\" key of libnvm's own per record.",
  device: true,
  options: { ...OUTPUT_OPTIONS, timeout: { type: "string", short: "t", value: "MS", help: "per-command timeout in milliseconds (default 10000)" } },
  async run(ctx) {
    const d = await runDiscovery(ctx);
    if (ctx.output === "json") printJson(discoveryJson(d));
    else process.stdout.write(discoveryText(d));
  },
};
