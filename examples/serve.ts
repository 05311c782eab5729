/**
 * Own a controller and serve it to other processes on a Unix socket (lib/share/server.ts): they
 * open it with --ctrl=unix:PATH (Controller.open("unix:PATH")), send admin commands through this
 * process, and do their I/O through queues in their own memory. Runs until SIGINT/SIGTERM, then
 * deletes every client's queues and shuts the controller down.
 *
 *   bun run examples/serve.ts --ctrl=05:00.0 [--socket=/run/libnvm/0000:05:00.0.sock] [--allow=features,format]
 *
 * Across a Dolphin SmartIO cluster (lib/share/sisci-link.ts): --ctrl=smartio:<fdid> --sisci borrows
 * the controller shared, publishes this process in the device's rendezvous segment and serves
 * clients of any host of the cluster, which open smartio-rpc:<fdid>.
 */
import { Controller } from "../lib/controller.ts";
import { parseSmartIoAddress, SmartIoBackend } from "../lib/backends/smartio.ts";
import { SHARE_GRANTS, ShareServer, type ShareGrant } from "../lib/share/server.ts";
import { SisciListener } from "../lib/share/sisci-link.ts";
import { intOption, parse, run, UsageError, openController } from "./common.ts";

const usage = `usage: bun run examples/serve.ts --ctrl=CTRL [--socket=PATH | --sisci] [--allow=GRANT,...] [--uid=UID,...] [--queues=N] [--mode=OCTAL]
  --ctrl=CTRL      the controller to own: PCI address (05:00.0, unbound: sysfs), /dev/disnvmN, smartio:<fdid>, ...
  --sisci          serve across the SmartIO cluster (with --ctrl=smartio:<fdid>) instead of a Unix socket:
                   the controller is borrowed shared, clients on any host open smartio-rpc:<fdid>
  --socket=PATH    where clients connect (default /run/libnvm/<PCI address>.sock)
  --allow=GRANTS   what clients may do beyond Identify, Get Log Page and Get Features, comma separated:
                   ${SHARE_GRANTS.join(", ")} (default: none)
  --uid=UIDS       the users served, checked with SO_PEERCRED (default: this process's uid)
  --queues=N       I/O queues one client may hold (default 8)
  --mode=OCTAL     permissions of the socket file (default 600)
  --timeout=MS     per-command timeout (default 10000)
`;

await run(async () => {
  const args = parse(usage, {
    socket: { type: "string" },
    allow: { type: "string" },
    uid: { type: "string" },
    queues: { type: "string" },
    mode: { type: "string" },
    timeout: { type: "string" },
    sisci: { type: "boolean" },
  });
  const allow = (args.allow ?? "").split(",").filter(Boolean) as ShareGrant[];
  for (const g of allow) if (!SHARE_GRANTS.includes(g)) throw new UsageError(`--allow=${g}: choose from ${SHARE_GRANTS.join(", ")}\n${usage}`);
  const uids = args.uid?.split(",").map((u) => intOption("uid", u, usage)!);
  const maxQueues = intOption("queues", args.queues, usage);
  const timeoutMs = intOption("timeout", args.timeout, usage);
  let mode: number | undefined;
  if (args.mode !== undefined) {
    if (!/^[0-7]{3,4}$/.test(args.mode)) throw new UsageError(`--mode=${args.mode}: octal permissions such as 600 or 660\n${usage}`);
    mode = parseInt(args.mode, 8);
  }
  if (args.ctrl.startsWith("unix:")) throw new UsageError(`--ctrl=${args.ctrl}: a server owns its controller; give the PCI address\n${usage}`);
  const sisci = args.sisci === true;
  if (sisci && (!/^smartio:/i.test(args.ctrl) || args.socket !== undefined)) {
    throw new UsageError(`--sisci serves a controller borrowed through SmartIO over SISCI: give --ctrl=smartio:<fdid>, and no --socket\n${usage}`);
  }
  // Signals: stop serving (deleting the clients' queues) before the controller closes.
  const copts = { handleSignals: false, ...(timeoutMs !== undefined ? { timeoutMs } : {}) };
  // SISCI clients borrow the device too: the server's borrow must be shared, not exclusive.
  const ctrl = sisci ? Controller.openBackend(new SmartIoBackend(parseSmartIoAddress(args.ctrl), { exclusive: false }), copts) : openController(args, copts);
  const log = (line: string) => process.stderr.write(`serve: ${line}\n`);
  let server: ShareServer;
  try {
    server = ShareServer.listen(ctrl, {
      ...(sisci ? { listener: SisciListener.listen(parseSmartIoAddress(args.ctrl)) } : {}),
      ...(args.socket !== undefined ? { socket: args.socket } : {}),
      allow,
      ...(uids ? { uids } : {}),
      ...(maxQueues !== undefined ? { maxQueues } : {}),
      ...(mode !== undefined ? { mode } : {}),
      log,
    });
  } catch (e) {
    ctrl.close();
    throw e;
  }
  const stop = (sig: string, code: number) => {
    log(`${sig}: stopping`);
    try {
      server.close();
    } finally {
      ctrl.close();
    }
    process.exit(code);
  };
  process.on("SIGINT", () => stop("SIGINT", 130));
  process.on("SIGTERM", () => stop("SIGTERM", 143));
  process.on("SIGHUP", () => stop("SIGHUP", 129));
  process.on("exit", () => {
    server.close();
    ctrl.close();
  });
  // One line on stdout once clients may connect (scripts wait for it).
  console.log(`serving ${ctrl.name} at ${server.address}${allow.length ? ` (allow: ${allow.join(",")})` : ""}`);
  await new Promise<never>(() => {});
});
