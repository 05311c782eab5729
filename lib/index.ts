/** libnvm: a userspace NVM Express driver library for Bun. */
export {
  Controller,
  FORMAT_TIMEOUT_MS,
  readRegisters,
  type AdminAsyncOptions,
  type ControllerOptions,
  type DmaBufExporter,
  type FeatureResult,
  type FormatOptions,
  type FormatProgress,
  type GetFeatureOptions,
  type MapDmaBufOptions,
  type RegisterSnapshot,
  type SetFeatureOptions,
} from "./controller.ts";
export { DmaBuffer } from "./dma.ts";
export { buildPrp, prpListPages, PRP_PAGE_SIZE, type PrpPair } from "./prp.ts";
export { QueuePair, SubmissionQueue, CompletionQueue, type Completion, type ExecOptions } from "./queue.ts";
export { SysfsBackend } from "./backends/sysfs.ts";
export { VfioBackend } from "./backends/vfio.ts";
export { DisnvmBackend, disnvmIsolation, type DisnvmInfo } from "./backends/disnvm.ts";
export { SmartIoBackend, parseSmartIoAddress, type SmartIoBackendOptions, type CacheSyncDirection } from "./backends/smartio.ts";
export { setSisciLibraryPath, sisciLibraryPath } from "./sisci.ts";
export { resolveController, createBackend, type BackendChoice, type ResolvedController } from "./backends/index.ts";
export type { Backend, BackendKind, DmaBufImport, DmaMapping, DmaOptions } from "./backends/types.ts";
export { parseBdf, findPciDevice, PCI_CLASS_NVME, type PciDevice } from "./pci.ts";
export { native, setNativeLibraryPath, type NativeLib } from "./native.ts";
export {
  cuda,
  CudaMemory,
  HostRegistration,
  IoMemoryRegistration,
  setCudaLibraryPath,
  cudaLibraryPath,
  type CudaDevice,
  type CudaAllocOptions,
  type DeviceRange,
  type HostCopyOptions,
} from "./cuda/index.ts";
export * from "./errors.ts";
export * as commands from "./spec/commands.ts";
export * as registers from "./spec/registers.ts";
export * as status from "./spec/status.ts";
export * as log from "./spec/log.ts";
export * from "./spec/identify.ts";
export { Namespace, MAX_BLOCKS_PER_COMMAND, type IoOptions, type WriteOptions, type BlockRange } from "./namespace.ts";
export { IoQueue, IoCompletionQueue, STATUS_ABORTED_BY_HOST, STATUS_SQ_DELETION, type IoQueueOptions, type CompletionHandler, type PollingOptions } from "./io.ts";
export * as sgl from "./sgl.ts";
export { exportIoQueue, exportBuffer, attachIoQueue, type SharedIoQueue, type SharedMapping, type AttachedIoQueue } from "./worker.ts";
export * from "./gpu/index.ts";
export { ShareServer, SHARE_GRANTS, defaultSocketPath, type ShareServerOptions, type ShareGrant, type ShareClientInfo } from "./share/server.ts";
export type { ShareClientOptions } from "./share/client.ts";
export { SisciListener, connectSisci, sisciRpcAddress, type SisciLinkOptions, type SisciListenerOptions } from "./share/sisci-link.ts";
export type { ShareConnection, ShareListener, PeerInfo } from "./share/carrier.ts";
export * as shareProtocol from "./share/protocol.ts";
