/**
 * Reset a controller, bring up its admin queue and print Identify Controller and the
 * namespaces, in the format of the original libnvm's identify example. Over NVMe/TCP the same
 * (--ctrl=nvme+tcp://HOST:PORT/SUBNQN); --discover with --ctrl=nvme+tcp://HOST[:PORT] lists the
 * subsystems the target offers instead.
 *
 *   bun run examples/identify.ts --ctrl=05:00.0 [--ns=N] [--json]
 *   bun run examples/identify.ts --ctrl=nvme+tcp://10.0.0.5:4420 --discover
 */
import { formatVersion, mdtsBytes, type IdentifyNamespace } from "../lib/spec/identify.ts";
import { Controller } from "../lib/controller.ts";
import { discoveryJson, discoveryText } from "../cli/commands/discover.ts";
import { intOption, parse, run, toJson, openController, UsageError } from "./common.ts";

const usage = `usage: bun run examples/identify.ts --ctrl=CTRL [--ns=NSID] [--discover] [--json]
  --ctrl=CTRL  controller's PCI address (05:00.0 or 0000:05:00.0), /dev/disnvmN, nvme+tcp://HOST:PORT/SUBNQN,
               or unix:PATH / smartio-rpc:<fdid> (served by examples/serve.ts)
  --ns=NSID    show only this namespace (default: every active namespace)
  --discover   --ctrl=nvme+tcp://HOST[:PORT]: list the subsystems the target offers (its Discovery Log Page)
  --json       print one JSON object with the parsed structures
  -h, --help   this text
`;

const hexBytes = (v: number) => `${(v & 0xff).toString(16).padStart(2, "0")} ${((v >>> 8) & 0xff).toString(16).padStart(2, "0")}`;

await run(() => {
  const args = parse(usage, { ns: { type: "string" }, discover: { type: "boolean", default: false } });
  const nsArg = intOption("ns", args.ns, usage);
  if (args.discover) {
    if (!args.ctrl.startsWith("nvme+tcp://")) throw new UsageError(`--discover needs --ctrl=nvme+tcp://HOST[:PORT], not ${args.ctrl}\n${usage}`);
    const d = Controller.discover(args.ctrl, { handleSignals: false });
    if (args.json) console.log(toJson(discoveryJson(d)));
    else process.stdout.write(discoveryText(d));
    return;
  }
  if (!args.json) console.log("Resetting controller and setting up admin queues...");
  using ctrl = openController(args);
  const id = ctrl.info;
  const nsids = nsArg !== undefined ? [nsArg] : ctrl.activeNamespaces();
  const namespaces = nsids.map((nsid) => ({ nsid, ...ctrl.identifyNamespace(nsid) }));
  const mdts = mdtsBytes(id.mdts, ctrl.cap.minPageSize);

  if (args.json) {
    console.log(
      toJson({
        controller: ctrl.name,
        registers: { cap: ctrl.cap, vs: formatVersion(ctrl.vs) },
        maxDataTransferSize: mdts,
        identify: id,
        namespaces,
      }),
    );
    return;
  }
  console.log("------------- Controller information -------------");
  if (ctrl.transport === "tcp") {
    console.log(`Transport               : NVMe/TCP ${ctrl.tcp.address}, controller ${ctrl.tcp.cntlid}`);
    console.log(`Subsystem NQN           : ${id.subnqn}`);
  }
  console.log(`PCI Vendor ID           : ${hexBytes(id.vid)}`);
  console.log(`PCI Subsystem Vendor ID : ${hexBytes(id.ssvid)}`);
  console.log(`NVM Express version     : ${formatVersion(ctrl.vs)}`);
  console.log(`Controller page size    : ${ctrl.pageSize}`);
  console.log(`Max queue entries       : ${ctrl.cap.mqes + 1}`);
  console.log(`Serial Number           : ${id.sn}`);
  console.log(`Model Number            : ${id.mn}`);
  console.log(`Firmware revision       : ${id.fr}`);
  console.log(`Max data transfer size  : ${mdts === null ? "unlimited" : mdts}`);
  console.log(`Max outstanding commands: ${id.maxcmd}`);
  console.log(`Max number of namespaces: ${id.nn}`);
  console.log("--------------------------------------------------");
  for (const ns of namespaces) printNamespace(ns.nsid, ns);
});

function printNamespace(nsid: number, ns: IdentifyNamespace): void {
  console.log(`------------- Namespace ${nsid} information -------------`);
  if (!ns.isActive) {
    console.log("Namespace is not active");
  } else {
    console.log(`Namespace size          : ${ns.nsze} blocks (${ns.nsze * BigInt(ns.lbaSize)} bytes)`);
    console.log(`Namespace capacity      : ${ns.ncap} blocks`);
    console.log(`Namespace utilization   : ${ns.nuse} blocks`);
    console.log(`LBA data size           : ${ns.lbaSize}`);
    console.log(`Metadata size           : ${ns.metadataSize}`);
    console.log(`LBA format              : ${ns.formatIndex} of ${ns.nlbaf + 1}`);
    if (/[^0]/.test(ns.nguid)) console.log(`NGUID                   : ${ns.nguid}`);
    if (/[^0]/.test(ns.eui64)) console.log(`EUI64                   : ${ns.eui64}`);
  }
  console.log("--------------------------------------------------");
}
