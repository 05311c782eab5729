/**
 * Opening one NVMe/TCP connection (NVMe/TCP Transport Specification 1.0, 3.3.1 "Connection
 * Establishment"): TCP connect, then ICReq / ICResp, checked. What follows (Connect, commands) is
 * the queue's (queue.ts). Every step is bounded by the caller's timeout.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { ConnectionError, ProtocolError, UnsupportedError } from "../../errors.ts";
import { checkPtr, cstr, errnoName, native } from "../../native.ts";
import { encodeIcReq, ICRESP_SIZE, MIN_MAXH2CDATA, parseCommonHeader, parseIcResp, PduType, pduTypeName, PFV_1_0, type Digests, type IcResp } from "./pdu.ts";

export interface LinkTarget {
  readonly host: string;
  readonly port: number;
}

export function addressOf(t: LinkTarget): string {
  return t.host.includes(":") ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`;
}

function connectError(t: LinkTarget, qid: number, errno: number, timeoutMs: number): ConnectionError {
  const a = addressOf(t);
  const why =
    errno === 2
      ? `the name ${t.host} does not resolve`
      : errno === 111
        ? "connection refused: no NVMe/TCP target listens there (check the port, and that the nvmet port is enabled)"
        : errno === 110
          ? `no answer within ${timeoutMs} ms`
          : errno === 113 || errno === 101
            ? `${errnoName(errno)}: the network does not reach the target`
            : errnoName(errno);
  return new ConnectionError(`cannot connect queue ${qid} to ${a}: ${why}`, a, qid, errno);
}

/**
 * Connect to `t`, exchange ICReq/ICResp asking for `digests`, and return the socket and what the
 * controller answered. The ICResp must mirror the digests asked for, use PFV 0 and CPDA 0 (libnvm
 * pads no data), and offer MAXH2CDATA of at least 4096 bytes in whole dwords; anything else closes
 * the socket with ProtocolError (UnsupportedError for a CPDA we do not implement).
 */
export function openLink(t: LinkTarget, qid: number, digests: Digests, timeoutMs: number): { fd: number; icresp: IcResp } {
  const n = native();
  const fd = n.nvm_tcp_connect(cstr(t.host), t.port, timeoutMs);
  if (fd < 0) throw connectError(t, qid, -fd, timeoutMs);
  const a = addressOf(t);
  const buf = checkPtr(n.nvm_host_alloc(256 + 16), "nvm_host_alloc");
  try {
    const bytes = new Uint8Array(toArrayBuffer(buf, 0, 256));
    const iov = new Uint32Array(toArrayBuffer(buf, 256, 16));
    // ICReq: PFV 0, HPDA 0 (no padding before C2H data), the digests, MAXR2T 0 (one R2T at a time).
    bytes.set(encodeIcReq({ pfv: PFV_1_0, hpda: 0, digests, maxr2t: 0 }), 128);
    const at = Number(buf) + 128;
    iov[0] = at >>> 0;
    iov[1] = Math.floor(at / 0x1_0000_0000);
    iov[2] = 128;
    iov[3] = 0;
    const deadline = performance.now() + timeoutMs;
    let r = n.nvm_tcp_sendv(fd, (Number(buf) + 256) as Pointer, 1, timeoutMs);
    if (r < 0) throw new ConnectionError(`queue ${qid} to ${a}: sending ICReq failed: ${errnoName(-r)}`, a, qid, -r);
    let have = 0;
    while (have < ICRESP_SIZE) {
      const left = deadline - performance.now();
      if (left <= 0) throw new ConnectionError(`queue ${qid} to ${a}: no ICResp within ${timeoutMs} ms of ICReq (is it an NVMe/TCP target?)`, a, qid, 110);
      r = n.nvm_tcp_recv3(fd, Number(buf) + have, ICRESP_SIZE - have, 0, 0, 0, 0, Math.ceil(Math.min(left, 100) * 1000));
      if (r < 0) {
        throw new ConnectionError(
          `queue ${qid} to ${a}: ${-r === 107 ? "the target closed the connection" : `receive failed (${errnoName(-r)})`} before answering ICReq${digests.header || digests.data ? " (does it support the digests asked for?)" : ""}`,
          a,
          qid,
          -r,
        );
      }
      have += r;
      // The common header comes first: refuse anything but an ICResp before waiting for 128 bytes.
      if (have >= 8 && have - r < 8) {
        const ch = parseCommonHeader(bytes);
        if (ch.type !== PduType.ICResp || ch.hlen !== ICRESP_SIZE || ch.plen !== ICRESP_SIZE) {
          throw new ProtocolError(
            `queue ${qid} to ${a}: answer to ICReq is ${pduTypeName(ch.type)} with HLEN ${ch.hlen} and PLEN ${ch.plen}, not a 128-byte ICResp`,
            "icresp",
            qid,
          );
        }
      }
    }
    const ic = parseIcResp(bytes);
    if (ic.pfv !== PFV_1_0) throw new ProtocolError(`queue ${qid} to ${a}: ICResp PFV ${ic.pfv}; libnvm speaks PFV 0 (NVMe/TCP 1.0)`, "icresp-pfv", qid);
    if (ic.digests.header !== digests.header || ic.digests.data !== digests.data) {
      const d = (x: Digests) => `header ${x.header ? "on" : "off"}, data ${x.data ? "on" : "off"}`;
      throw new ProtocolError(`queue ${qid} to ${a}: ICResp enables digests (${d(ic.digests)}) other than asked for (${d(digests)})`, "icresp-digest", qid);
    }
    if (ic.cpda !== 0) {
      throw new UnsupportedError(`queue ${qid} to ${a}: the target wants H2C data aligned to ${(ic.cpda + 1) * 4} bytes (CPDA ${ic.cpda}); libnvm sends no padding (CPDA 0 only)`);
    }
    if (ic.maxh2cdata < MIN_MAXH2CDATA || ic.maxh2cdata % 4 !== 0) {
      throw new ProtocolError(`queue ${qid} to ${a}: ICResp MAXH2CDATA ${ic.maxh2cdata}: at least ${MIN_MAXH2CDATA} and a multiple of 4`, "icresp-maxh2cdata", qid);
    }
    return { fd, icresp: ic };
  } catch (e) {
    n.nvm_tcp_close(fd);
    throw e;
  } finally {
    n.nvm_host_free(buf);
  }
}
