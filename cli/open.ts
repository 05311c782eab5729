/**
 * Opening a controller from the command line's --backend and --force: the one place the command
 * line loads the driver (lib/controller.ts and everything under it), so commands that never open
 * one (--help, completion, usage errors) start without it. The device is a PCI address, a disnvm
 * node, an NVMe/TCP address (nvme+tcp://HOST:PORT/SUBNQN), which takes no backend, or unix:PATH or
 * smartio-rpc:<fdid>, a controller another process serves (examples/serve.ts).
 */
import { Controller, type ControllerOptions } from "../lib/controller.ts";
import type { BackendChoice } from "../lib/backends/index.ts";
import { isTcpTarget } from "../lib/transports/tcp/uri.ts";
import { unixPath } from "../lib/share/link.ts";
import { sisciRpcFdid } from "../lib/share/sisci-link.ts";
import { BACKENDS, UsageError } from "./common.ts";

/** Controller.open with the backend (auto, sysfs, vfio, disnvm, smartio) and force the user gave. */
export function openController(args: { ctrl: string; backend?: unknown; force?: unknown }, opts: ControllerOptions = {}): Controller {
  const backend = (args.backend ?? "auto") as string;
  if (!(BACKENDS as readonly string[]).includes(backend)) throw new UsageError(`--backend=${backend}: choose one of ${BACKENDS.join(", ")}`);
  if (isTcpTarget(args.ctrl)) {
    if (backend !== "auto") throw new UsageError(`--backend=${backend}: ${args.ctrl} is reached over NVMe/TCP, which has no backend`);
    if (args.force === true) throw new UsageError(`--force: ${args.ctrl} is an NVMe/TCP controller; each connection is a controller of its own, nothing to take over`);
    return Controller.open(args.ctrl, opts);
  }
  if (unixPath(args.ctrl) !== undefined || sisciRpcFdid(args.ctrl) !== undefined) {
    if (backend !== "auto") throw new UsageError(`--backend=${backend}: ${args.ctrl} is a controller another process serves; the server picked its backend`);
    if (args.force === true) throw new UsageError(`--force: ${args.ctrl} is served by another process, which owns it; nothing to take over`);
    return Controller.open(args.ctrl, opts);
  }
  return Controller.open(args.ctrl, { ...opts, backend: backend as BackendChoice, force: args.force === true });
}
