/**
 * Read blocks by DMA straight into GPU memory: the controller writes the GPU's memory itself (a
 * CUDA allocation exported as a dma-buf and imported by the disnvm module for the controller), with
 * no bounce through host memory. The data is then copied back to the host, and with --verify
 * compared byte for byte with the same blocks read into host memory.
 *
 *   bun run examples/gpu-read.ts --ctrl=/dev/disnvm0 --ns=1 --lba=0 --blocks=2048 --verify
 */
import { createHash } from "node:crypto";
import { cuda, Namespace } from "../lib/index.ts";
import { MismatchError } from "../cli/cli.ts";
import { intOption, openController, parse, run, toJson, UsageError, yieldForSignals } from "./common.ts";

const usage = `usage: bun run examples/gpu-read.ts --ctrl=DEV --ns=NSID --lba=N --blocks=N [--gpu=N] [--verify] [--json]
  Reads BLOCKS blocks at LBA by DMA into GPU memory, copies them back to the host and prints the
  bytes moved and the rate of the DMA. Needs the disnvm backend and a GPU whose driver exports
  dma-bufs (libnvm doctor says which). LIBNVM_LIBCUDA names another libcuda.
  --ctrl=DEV     /dev/disnvmN, or the PCI address of a controller bound to disnvm
  --ns=NSID      namespace
  --lba=N        first block
  --blocks=N     blocks to read (split into commands of at most MDTS, 8 in flight)
  --gpu=N        CUDA device ordinal (default 0)
  --verify       also read the blocks into host memory and compare them with what reached the GPU
  --json         one JSON object on stdout
  -h, --help     this text
`;


/** Commands kept in flight: enough to keep an emulated or real controller busy, few enough for one queue. */
const IN_FLIGHT = 8;

/** The tool's main, for `libnvm gpu-read` as for this file run directly. */
export async function gpuRead(argv: string[]): Promise<void> {
  const args = parse(usage, { ns: { type: "string" }, lba: { type: "string" }, blocks: { type: "string" }, gpu: { type: "string" }, verify: { type: "boolean", default: false } }, argv);
  const nsid = intOption("ns", args.ns, usage);
  const lba = intOption("lba", args.lba, usage);
  const blocks = intOption("blocks", args.blocks, usage);
  const gpu = intOption("gpu", args.gpu, usage) ?? 0;
  if (nsid === undefined || lba === undefined || blocks === undefined) throw new UsageError(`--ns, --lba and --blocks are required\n${usage}`);
  if (blocks === 0) throw new UsageError(`--blocks=0: nothing to read\n${usage}`);

  using ctrl = openController(args);
  const ns = new Namespace(ctrl, nsid);
  ns.checkSpan(lba, blocks);
  const bytes = blocks * ns.lbaSize;
  const device = cuda.devices()[gpu];
  if (!device) throw new UsageError(`--gpu=${gpu}: there are ${cuda.devices().length} CUDA devices (0 to ${cuda.devices().length - 1})`);

  // Declared in this order so that `using` frees the import before the GPU memory behind it.
  using mem = cuda.alloc(bytes, { device: gpu });
  using gbuf = ctrl.mapCudaMemory(mem);
  const queue = ctrl.createIoQueue({ entries: 2 * IN_FLIGHT });
  const chunk = ns.maxBlocks;

  /** Read [lba, lba+blocks) into `buf` (at the same offsets), IN_FLIGHT commands at a time. */
  const readAll = async (buf: typeof gbuf): Promise<number> => {
    let commands = 0;
    const inFlight = new Set<Promise<void>>();
    for (let done = 0; done < blocks; ) {
      const n = Math.min(chunk, blocks - done);
      const p = ns.read(lba + done, n, buf, { queue, offset: done * ns.lbaSize }).finally(() => inFlight.delete(p));
      inFlight.add(p);
      commands++;
      done += n;
      if (inFlight.size >= IN_FLIGHT) await Promise.race(inFlight);
      await yieldForSignals();
    }
    await Promise.all(inFlight);
    return commands;
  };

  const t0 = performance.now();
  const commands = await readAll(gbuf);
  const seconds = (performance.now() - t0) / 1000;

  const fromGpu = new Uint8Array(bytes);
  mem.copyToHost(fromGpu);
  const sha256 = createHash("sha256").update(fromGpu).digest("hex");

  let verified: "identical" | undefined;
  if (args.verify) {
    using host = ctrl.allocBuffer(bytes);
    await readAll(host);
    const h = host.bytes;
    for (let i = 0; i < bytes; i++) {
      if (h[i] !== fromGpu[i]) {
        throw new MismatchError(`byte ${i} (LBA ${lba + Math.floor(i / ns.lbaSize)}) differs: 0x${fromGpu[i]!.toString(16)} in GPU memory, 0x${h[i]!.toString(16)} read into host memory`);
      }
    }
    verified = "identical";
  }

  const gbPerSec = bytes / seconds / 1e9;
  if (args.json) {
    process.stdout.write(
      toJson({
        ctrl: ctrl.name,
        nsid,
        lba: BigInt(lba),
        blocks: BigInt(blocks),
        lbaSize: ns.lbaSize,
        bytes: BigInt(bytes),
        commands,
        gpu: { ordinal: gpu, name: device.name, pciBusId: device.pciBusId },
        seconds: Number(seconds.toFixed(6)),
        gbPerSec,
        sha256,
        ...(verified ? { verified } : {}),
      }) + "\n",
    );
  } else {
    process.stdout.write(
      `gpu-read: ${bytes} bytes, ${blocks} blocks, ${commands} command${commands === 1 ? "" : "s"} into GPU ${gpu} (${device.name}, ${device.pciBusId}), ` +
        `${seconds.toFixed(3)} s, ${gbPerSec.toFixed(3)} GB/s${verified ? "; verified: identical to a read into host memory" : ""}\n`,
    );
  }
}

export const GPU_READ_USAGE = usage;

if (import.meta.main) await run(() => gpuRead(Bun.argv.slice(2)));
