/**
 * Every error libnvm throws. Each class sets `name` and a stable `code` so callers can branch
 * without parsing messages; each message names the offending value and what to do about it.
 */
import { statusName, statusTypeName } from "./spec/status-names.ts";

export type NvmeErrorCode =
  | "ERR_NVME_STATUS"
  | "ERR_NVME_TIMEOUT"
  | "ERR_NVME_CONTROLLER_FATAL"
  | "ERR_NVME_NATIVE"
  | "ERR_NVME_INVALID_ARGUMENT"
  | "ERR_NVME_DEVICE"
  | "ERR_NVME_PERMISSION"
  | "ERR_NVME_CLOSED"
  | "ERR_NVME_PARSE"
  | "ERR_NVME_BUSY"
  | "ERR_NVME_UNSUPPORTED"
  | "ERR_NVME_CUDA"
  | "ERR_NVME_NO_CPU_VIEW"
  | "ERR_NVME_DMABUF_REVOKED"
  | "ERR_NVME_CONNECTION"
  | "ERR_NVME_PROTOCOL"
  | "ERR_NVME_DIGEST"
  | "ERR_NVME_SMARTIO"
  | "ERR_NVME_SHARE"
  | "ERR_NVME_SHARE_PROTOCOL";

export abstract class NvmeError extends Error {
  abstract readonly code: NvmeErrorCode;
}

/** Where a failed command came from, for the message and for callers that log it. */
export interface CommandContext {
  /** Command name as the specification prints it, e.g. "Identify" or "Read". */
  readonly command: string;
  readonly opcode: number;
  readonly cid: number;
  /** 0 for the admin queue. */
  readonly sqid: number;
  /** Extra text such as "@ LBA 123, 8 blocks" or "CNS 0x01". */
  readonly detail?: string;
  /**
   * The status's name when the generic tables would name it wrongly: command-specific codes of
   * Fabrics commands (Connect Invalid Parameters is SC 82h, which the NVM tables call something else).
   */
  readonly statusName?: string;
}

/** The controller completed a command with a non-zero status (NVMe base spec, Completion Queue Entry DW3). */
export class NvmeStatusError extends NvmeError {
  override readonly name = "NvmeStatusError";
  readonly code = "ERR_NVME_STATUS" as const;
  /** Status Code Type (SCT), bits 27:25 of DW3. */
  readonly sct: number;
  /** Status Code (SC), bits 24:17 of DW3. */
  readonly sc: number;
  /** Do Not Retry (DNR), bit 31. */
  readonly dnr: boolean;
  /** More (M), bit 30: a log page has more information. */
  readonly more: boolean;
  /** Command Retry Delay (CRD), bits 29:28. */
  readonly crd: number;
  readonly command: string;
  readonly opcode: number;
  readonly cid: number;
  readonly sqid: number;
  /** Human-readable status name from the specification's tables. */
  readonly status: string;

  /** `status` is the 15-bit Status Field (DW3 bits 31:17 shifted down by 17). */
  constructor(status: number, ctx: CommandContext) {
    const sc = status & 0xff;
    const sct = (status >>> 8) & 0x7;
    const crd = (status >>> 11) & 0x3;
    const more = ((status >>> 13) & 1) === 1;
    const dnr = ((status >>> 14) & 1) === 1;
    const name = ctx.statusName ?? statusName(sct, sc);
    const hex = (v: number) => "0x" + v.toString(16);
    const where = ctx.detail ? ` ${ctx.detail}` : "";
    super(
      `${ctx.command}(0x${ctx.opcode.toString(16).padStart(2, "0")})${where}: ${name} ` +
        `(sct ${hex(sct)} ${statusTypeName(sct)} / sc ${hex(sc)})${dnr ? " DNR" : ""}${more ? " MORE" : ""} ` +
        `[sqid ${ctx.sqid}, cid ${ctx.cid}]`,
    );
    this.sct = sct;
    this.sc = sc;
    this.dnr = dnr;
    this.more = more;
    this.crd = crd;
    this.command = ctx.command;
    this.opcode = ctx.opcode;
    this.cid = ctx.cid;
    this.sqid = ctx.sqid;
    this.status = name;
  }
}

/** A command did not complete before its deadline, or the controller did not change state within CAP.TO. */
export class NvmeTimeoutError extends NvmeError {
  override readonly name = "NvmeTimeoutError";
  readonly code = "ERR_NVME_TIMEOUT" as const;
  constructor(
    message: string,
    readonly timeoutMs: number,
  ) {
    super(message);
  }
}

/** CSTS.CFS is set, or CSTS reads all ones (the device is gone from the bus). */
export class ControllerFatalError extends NvmeError {
  override readonly name = "ControllerFatalError";
  readonly code = "ERR_NVME_CONTROLLER_FATAL" as const;
  constructor(
    message: string,
    readonly csts: number,
  ) {
    super(message);
  }
}

/** A call into the C library failed with an errno. */
export class NativeError extends NvmeError {
  override readonly name = "NativeError";
  readonly code = "ERR_NVME_NATIVE" as const;
  constructor(
    message: string,
    readonly errno: number,
    readonly call: string,
    readonly path?: string,
  ) {
    super(message);
  }
}

/** The caller passed something the library or the controller cannot accept; nothing was sent to the device. */
export class InvalidArgumentError extends NvmeError {
  override readonly name = "InvalidArgumentError";
  readonly code = "ERR_NVME_INVALID_ARGUMENT" as const;
}

/** The controller or namespace uses something libnvm does not support yet (e.g. metadata, protection information). */
export class UnsupportedError extends NvmeError {
  override readonly name = "UnsupportedError";
  readonly code = "ERR_NVME_UNSUPPORTED" as const;
}

/** The device cannot be used as asked: not found, not NVMe, bound to a kernel driver. */
export class DeviceError extends NvmeError {
  override readonly name = "DeviceError";
  readonly code = "ERR_NVME_DEVICE" as const;
}

/** The process lacks a privilege or a resource limit is too low (CAP_SYS_ADMIN, memlock). */
export class PermissionError extends NvmeError {
  override readonly name = "PermissionError";
  readonly code = "ERR_NVME_PERMISSION" as const;
}

/** The controller, queue or buffer was used after close(). */
export class ClosedError extends NvmeError {
  override readonly name = "ClosedError";
  readonly code = "ERR_NVME_CLOSED" as const;
}

/** A structure returned by the controller is too short or self-contradictory. */
export class ParseError extends NvmeError {
  override readonly name = "ParseError";
  readonly code = "ERR_NVME_PARSE" as const;
}

/** Another live process owns the controller (libnvm's advisory lock); opening it would reset it under that process. */
export class ControllerBusyError extends NvmeError {
  override readonly name = "ControllerBusyError";
  readonly code = "ERR_NVME_BUSY" as const;
  constructor(
    message: string,
    /** PID of the owner, or 0 when it could not be read. */
    readonly pid: number,
  ) {
    super(message);
  }
}

/** Why a CUDA feature cannot be used: callers that can do without the GPU branch on it. */
export type CudaErrorReason =
  /** libcuda.so.1 was not found or is not a usable driver (the toolkit's stub, too old). */
  | "no-driver"
  /** The driver loaded but sees no GPU. */
  | "no-device"
  /** The GPU or its driver lacks the feature asked for (dma-buf export, mapped host memory). */
  | "unsupported"
  /** A driver call failed. */
  | "driver";

/** The CUDA driver (libcuda) is missing, sees no GPU, lacks a feature, or failed a call. */
export class CudaError extends NvmeError {
  override readonly name = "CudaError";
  readonly code = "ERR_NVME_CUDA" as const;
  readonly reason: CudaErrorReason;
  /** The driver entry point that failed, as libcuda exports it (e.g. "cuMemAlloc_v2"), or "dlopen". */
  readonly call: string;
  /** The CUresult the driver returned, when it returned one. */
  readonly result: number | undefined;
  /** The driver's own name for `result` (cuGetErrorName), e.g. "CUDA_ERROR_OUT_OF_MEMORY". */
  readonly resultName: string | undefined;

  constructor(
    message: string,
    opts: { readonly reason: CudaErrorReason; readonly call: string; readonly result?: number; readonly resultName?: string },
  ) {
    super(message);
    this.reason = opts.reason;
    this.call = opts.call;
    this.result = opts.result;
    this.resultName = opts.resultName;
  }
}

/**
 * A DMA buffer without CPU memory (one imported from a dma-buf: its memory is its exporter's, a
 * GPU's for instance) was asked for a CPU view (bytes, u32, pointer). Nothing was read or written.
 */
export class NoCpuViewError extends NvmeError {
  override readonly name = "NoCpuViewError";
  readonly code = "ERR_NVME_NO_CPU_VIEW" as const;
}

/**
 * The exporter of an imported dma-buf took its memory back (revoked the import, e.g. on a GPU
 * reset): the kernel stopped the controller before it let the memory go. Commands that used the
 * buffer failed with this error (whether their data moved is unknown), and the buffer refuses
 * every new one; other buffers work again once the controller was reset.
 */
export class DmaBufRevokedError extends NvmeError {
  override readonly name = "DmaBufRevokedError";
  readonly code = "ERR_NVME_DMABUF_REVOKED" as const;
}

/**
 * NVMe/TCP: the connection to the target could not be made (refused, unreachable, timed out, the
 * name does not resolve) or was lost (the target closed or reset it, a send failed). Commands that
 * were outstanding on it fail with this error; the controller reconnects for the commands that follow.
 */
export class ConnectionError extends NvmeError {
  override readonly name = "ConnectionError";
  readonly code = "ERR_NVME_CONNECTION" as const;
  constructor(
    message: string,
    /** "host:port" of the target. */
    readonly address: string,
    /** The queue whose connection it was (0: admin), or -1 before any queue existed. */
    readonly qid: number,
    /** The errno of the failed socket call, when there was one. */
    readonly errno = 0,
  ) {
    super(message);
  }
}

/**
 * NVMe/TCP: the target broke the protocol (a PDU of an unknown type or in the wrong direction, a
 * length or offset that does not add up, data beyond the command, an answer to a command not
 * outstanding, a termination request). The connection is closed at once, so nothing more lands in
 * any buffer; its outstanding commands fail with this error.
 */
export class ProtocolError extends NvmeError {
  override readonly name = "ProtocolError";
  readonly code = "ERR_NVME_PROTOCOL" as const;
  constructor(
    message: string,
    /** A short stable name of the rule that was broken, e.g. "pdu-type", "plen", "data-offset". */
    readonly violation: string,
    readonly qid: number,
  ) {
    super(message);
  }
}

/**
 * NVMe/TCP: a header or data digest (CRC-32C) did not match. A bad header digest closes the
 * connection (nothing in the stream can be trusted after it); a bad data digest fails only its
 * command, whose buffer then holds what arrived (NVMe/TCP 1.0, 3.6.2.2: Transient Transport Error).
 */
export class DigestError extends NvmeError {
  override readonly name = "DigestError";
  readonly code = "ERR_NVME_DIGEST" as const;
  constructor(
    message: string,
    readonly digest: "header" | "data",
    readonly qid: number,
  ) {
    super(message);
  }
}

/** Why a SmartIO (Dolphin SISCI) operation failed: callers branch on it. */
export type SmartIoErrorReason =
  /** SISCI is not installed here: the shim libnvm-sisci.so was not built, or libsisci cannot be loaded. */
  | "not-installed"
  /** No device with that fabric device id in the cluster (SCI_ERR_NO_SUCH_FDID). */
  | "no-device"
  /** The device is not lent, or another host or process borrowed it exclusively (SCI_ERR_NOT_AVAILABLE). */
  | "not-available"
  /** SISCI gave up waiting: a node or the link did not answer (SCI_ERR_TIMEOUT), or a data interrupt did not come. */
  | "timeout"
  /** Still in use when the teardown's deadline passed (SCI_ERR_BUSY): a remote node kept it connected. */
  | "busy"
  /** Any other SISCI failure; `sciText` has SISCI's own words. */
  | "sisci";

/**
 * A SmartIO operation failed: SISCI is missing, or a SISCI call failed. `call` names the SISCI
 * function (e.g. "SCIBorrowDevice"), `sciError` its sci_error_t and `sciText` SCIGetErrorString's
 * text; `errno` is the shim's class of it (c/include/nvm_sisci.h).
 */
export class SmartIoError extends NvmeError {
  override readonly name = "SmartIoError";
  readonly code = "ERR_NVME_SMARTIO" as const;
  readonly reason: SmartIoErrorReason;
  readonly call: string;
  readonly sciError: number | undefined;
  readonly sciText: string | undefined;
  readonly errno: number | undefined;

  constructor(
    message: string,
    opts: { readonly reason: SmartIoErrorReason; readonly call: string; readonly sciError?: number; readonly sciText?: string; readonly errno?: number },
  ) {
    super(message);
    this.reason = opts.reason;
    this.call = opts.call;
    this.sciError = opts.sciError;
    this.sciText = opts.sciText;
    this.errno = opts.errno;
  }
}

/** Why a shared controller's server (lib/share/) refused a request, or could not be used. */
export type ShareErrorReason =
  /** The server's filter refuses the command for clients (reset, format, firmware, ...): its --allow grants it. */
  | "refused"
  /** The client holds as many I/O queues as the server grants one client (--queues). */
  | "quota"
  /** The server does not serve this client's uid (SO_PEERCRED): run as the server's user, or add the uid with --uid. */
  | "peer"
  /** The queue named is not one of this client's. */
  | "not-owner"
  /** No server listens at the path, the connection was refused, or the server closed it (it exited or died). */
  | "server-gone"
  /** The server did not answer within the request's deadline. */
  | "timeout"
  /** The server and the client speak different protocol versions. */
  | "version"
  /** The server could not carry the request out (the controller failed it without a status). */
  | "failed"
  /**
   * The server reset the controller (a client was granted a reset, or its recovery): this I/O
   * queue is gone from it and its commands ended without a result. Create a new queue.
   */
  | "queue-lost";

/**
 * A shared controller (Controller.open("unix:PATH"), lib/share/): the server refused a request,
 * is gone, or did not answer in time. `reason` says which; the message says what to do.
 */
export class ShareError extends NvmeError {
  override readonly name = "ShareError";
  readonly code = "ERR_NVME_SHARE" as const;
  constructor(
    message: string,
    readonly reason: ShareErrorReason,
    /** The socket (or other rendezvous) the client or server uses, e.g. "unix:/run/libnvm/0000:05:00.0.sock". */
    readonly address: string,
  ) {
    super(message);
  }
}

/**
 * A message of the sharing protocol (lib/share/protocol.ts) broke its rules: bad magic or
 * version, a length past the limit, a body shorter than its type needs, an unknown type, a request
 * id replayed. `violation` is a short stable name of the rule ("magic", "truncated", "oversized",
 * "replayed", ...).
 */
export class ShareProtocolError extends NvmeError {
  override readonly name = "ShareProtocolError";
  readonly code = "ERR_NVME_SHARE_PROTOCOL" as const;
  constructor(
    message: string,
    readonly violation: string,
  ) {
    super(message);
  }
}
