/** libnvm: a userspace NVM Express driver library for Bun. */
export { Controller, readRegisters, type ControllerOptions, type RegisterSnapshot } from "./controller.ts";
export { DmaBuffer } from "./dma.ts";
export { buildPrp, prpListPages, PRP_PAGE_SIZE, type PrpPair } from "./prp.ts";
export { QueuePair, SubmissionQueue, CompletionQueue, type Completion, type ExecOptions } from "./queue.ts";
export { SysfsBackend } from "./backends/sysfs.ts";
export type { Backend, BackendKind, DmaMapping, DmaOptions } from "./backends/types.ts";
export { parseBdf, findPciDevice, PCI_CLASS_NVME, type PciDevice } from "./pci.ts";
export { native, setNativeLibraryPath, type NativeLib } from "./native.ts";
export * from "./errors.ts";
export * as commands from "./spec/commands.ts";
export * as registers from "./spec/registers.ts";
export * as status from "./spec/status.ts";
export * as log from "./spec/log.ts";
export * from "./spec/identify.ts";
export { Namespace, MAX_BLOCKS_PER_COMMAND, type IoOptions, type BlockRange } from "./namespace.ts";
export { IoQueue, IoCompletionQueue, type IoQueueOptions, type CompletionHandler } from "./io.ts";
export * as sgl from "./sgl.ts";
