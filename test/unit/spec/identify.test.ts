import { describe, expect, test } from "bun:test";
import { InvalidArgumentError, ParseError } from "../../../lib/errors.ts";
import {
  IDENTIFY_DATA_SIZE,
  formatVersion,
  mdtsBytes,
  parseIdentifyController,
  parseIdentifyNamespace,
  parseNamespaceList,
} from "../../../lib/spec/identify.ts";

/** Writes little-endian fields into a zeroed Identify page at the specification's byte offsets. */
class Page {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  constructor(size = IDENTIFY_DATA_SIZE) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }
  u8(off: number, v: number): this {
    this.view.setUint8(off, v);
    return this;
  }
  u16(off: number, v: number): this {
    this.view.setUint16(off, v, true);
    return this;
  }
  u32(off: number, v: number): this {
    this.view.setUint32(off, v, true);
    return this;
  }
  u64(off: number, v: bigint): this {
    this.view.setBigUint64(off, v, true);
    return this;
  }
  u128(off: number, v: bigint): this {
    this.view.setBigUint64(off, v & 0xffff_ffff_ffff_ffffn, true);
    this.view.setBigUint64(off + 8, v >> 64n, true);
    return this;
  }
  /** ASCII text padded to `len` with `pad` (space per the specification, NUL on some devices). */
  text(off: number, len: number, s: string, pad = 0x20): this {
    for (let i = 0; i < len; i++) this.bytes[off + i] = i < s.length ? s.charCodeAt(i) : pad;
    return this;
  }
  raw(off: number, data: number[]): this {
    this.bytes.set(data, off);
    return this;
  }
}

function controllerPage(): Page {
  const p = new Page()
    .u16(0, 0x1b36) // VID
    .u16(2, 0x1af4) // SSVID
    .text(4, 20, "SN-0123456789")
    .text(24, 40, "QEMU NVMe Ctrl")
    .text(64, 8, "8.2.0")
    .u8(72, 6) // RAB
    .raw(73, [0x00, 0x54, 0x52]) // IEEE OUI 525400h, least significant byte first
    .u8(76, 0x0b) // CMIC
    .u8(77, 7) // MDTS
    .u16(78, 0x0042) // CNTLID
    .u32(80, 0x00010400) // VER 1.4.0
    .u32(84, 1_000_000) // RTD3R
    .u32(88, 2_000_000) // RTD3E
    .u32(92, 0x0000_0100) // OAES
    .u32(96, 0x0000_8001) // CTRATT
    .u16(100, 0x0003) // RRLS
    .u8(111, 1) // CNTRLTYPE
    .raw(112, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
    .u16(128, 11) // CRDT1
    .u16(130, 22) // CRDT2
    .u16(132, 33) // CRDT3
    .u16(256, 0x025e) // OACS
    .u8(258, 3) // ACL
    .u8(259, 4) // AERL
    .u8(260, 0x17) // FRMW
    .u8(261, 0x1f) // LPA
    .u8(253, 0x03) // NVMSR
    .u8(254, 0x85) // VWCI: valid, 5 cycles left
    .u8(255, 0x02) // MEC
    .u8(262, 63) // ELPE
    .u8(263, 2) // NPSS: three power states
    .u8(264, 1) // AVSCC
    .u8(265, 1) // APSTA
    .u16(266, 343) // WCTEMP
    .u16(268, 353) // CCTEMP
    .u16(270, 50) // MTFA
    .u32(272, 0x4000) // HMPRE
    .u32(276, 0x1000) // HMMIN
    .u128(280, 0x1_0000_0000_0000_0000_1234n) // TNVMCAP, needs more than 64 bits
    .u128(296, 0xdead_beefn) // UNVMCAP
    .u32(312, 0x0100_0001) // RPMBS
    .u16(316, 30) // EDSTT
    .u8(318, 1) // DSTO
    .u8(319, 0xff) // FWUG
    .u16(320, 100) // KAS
    .u16(322, 1) // HCTMA
    .u16(324, 273) // MNTMT
    .u16(326, 373) // MXTMT
    .u32(328, 0x0000_0007) // SANICAP
    .u32(332, 8) // HMMINDS
    .u16(336, 16) // HMMAXD
    .u16(338, 5) // NSETIDMAX
    .u16(340, 6) // ENDGIDMAX
    .u8(342, 10) // ANATT
    .u8(343, 0x5f) // ANACAP
    .u32(344, 128) // ANAGRPMAX
    .u32(348, 64) // NANAGRPID
    .u32(352, 9) // PELS
    .u16(356, 0x0a0b) // DOMAINID
    .u128(368, 0x3_0000_0000_0000_0001n) // MEGCAP
    .u8(512, 0x66) // SQES: 64 bytes required and maximum
    .u8(513, 0x44) // CQES: 16 bytes
    .u16(514, 0x0100) // MAXCMD
    .u32(516, 256) // NN
    .u16(520, 0x015f) // ONCS
    .u16(522, 0x0001) // FUSES
    .u8(524, 0x04) // FNA
    .u8(525, 0x07) // VWC
    .u16(526, 0x00ff) // AWUN
    .u16(528, 0x0007) // AWUPF
    .u8(530, 1) // NVSCC
    .u8(531, 0x03) // NWPC
    .u16(532, 0x0003) // ACWU
    .u16(534, 0x0001) // OCFS
    .u32(536, 0x0010_0001) // SGLS
    .u32(540, 1024) // MNAN
    .u128(544, 0x4_0000_0000_0000_0002n) // MAXDNA
    .u32(560, 0x0102_0304) // MAXCNA
    .u32(1792, 4) // IOCCSZ
    .u32(1796, 1) // IORCSZ
    .u16(1800, 0) // ICDOFF
    .u8(1802, 1) // CTRATTR
    .u8(1803, 1) // MSDBD
    .u16(1804, 1); // OFCS
  const nqn = "nqn.2019-08.org.qemu:serial-0123";
  p.raw(768, [...new TextEncoder().encode(nqn)]);
  // PSD0: 25.00 W operational; PSD1: 0.5 W scaled by MXPS; PSD2: non-operational.
  p.u16(2048, 2500).u32(2048 + 4, 0).u32(2048 + 8, 0).raw(2048 + 12, [0, 0, 0, 0]);
  p.u16(2048 + 16, 800).u8(2048 + 18, 0x80).u16(2048 + 20, 1500).u8(2048 + 22, 0x82);
  p.u16(2080, 5000).u8(2080 + 3, 0x01).u32(2080 + 4, 50).u32(2080 + 8, 70).raw(2080 + 12, [1, 2, 3, 4]);
  p.u16(2112, 300).u8(2112 + 3, 0x02).u32(2112 + 4, 5000).u32(2112 + 8, 9000).raw(2112 + 12, [0xe2, 0xe2, 0xe2, 0xe2]);
  // PSD3 holds data that must be ignored because NPSS is 2.
  p.u16(2144, 0xffff);
  return p;
}

describe("parseIdentifyController", () => {
  const id = parseIdentifyController(controllerPage().bytes);

  test("identification strings, trailing spaces trimmed", () => {
    expect(id.vid).toBe(0x1b36);
    expect(id.ssvid).toBe(0x1af4);
    expect(id.sn).toBe("SN-0123456789");
    expect(id.mn).toBe("QEMU NVMe Ctrl");
    expect(id.fr).toBe("8.2.0");
  });

  test("bytes 72..111", () => {
    expect(id.rab).toBe(6);
    expect(id.ieee).toBe(0x525400);
    expect(id.cmic).toBe(0x0b);
    expect(id.mdts).toBe(7);
    expect(id.cntlid).toBe(0x42);
    expect(id.ver).toBe(0x00010400);
    expect(id.rtd3r).toBe(1_000_000);
    expect(id.rtd3e).toBe(2_000_000);
    expect(id.oaes).toBe(0x100);
    expect(id.ctratt).toBe(0x8001);
    expect(id.rrls).toBe(3);
    expect(id.cntrltype).toBe(1);
    expect(id.fguid).toBe("00112233445566778899aabbccddeeff");
    expect([id.crdt1, id.crdt2, id.crdt3]).toEqual([11, 22, 33]);
  });

  test("admin command set attributes, bytes 256..355", () => {
    expect(id.oacs).toBe(0x025e);
    expect(id.acl).toBe(3);
    expect(id.aerl).toBe(4);
    expect(id.frmw).toBe(0x17);
    expect(id.lpa).toBe(0x1f);
    expect(id.elpe).toBe(63);
    expect(id.npss).toBe(2);
    expect(id.avscc).toBe(1);
    expect(id.apsta).toBe(1);
    expect(id.wctemp).toBe(343);
    expect(id.cctemp).toBe(353);
    expect(id.mtfa).toBe(50);
    expect(id.hmpre).toBe(0x4000);
    expect(id.hmmin).toBe(0x1000);
    expect(id.tnvmcap).toBe(0x1_0000_0000_0000_0000_1234n);
    expect(id.unvmcap).toBe(0xdead_beefn);
    expect(id.rpmbs).toBe(0x0100_0001);
    expect(id.edstt).toBe(30);
    expect(id.dsto).toBe(1);
    expect(id.fwug).toBe(0xff);
    expect(id.kas).toBe(100);
    expect(id.hctma).toBe(1);
    expect(id.mntmt).toBe(273);
    expect(id.mxtmt).toBe(373);
    expect(id.sanicap).toBe(7);
    expect(id.hmminds).toBe(8);
    expect(id.hmmaxd).toBe(16);
    expect(id.nsetidmax).toBe(5);
    expect(id.endgidmax).toBe(6);
    expect(id.anatt).toBe(10);
    expect(id.anacap).toBe(0x5f);
    expect(id.anagrpmax).toBe(128);
    expect(id.nanagrpid).toBe(64);
    expect(id.pels).toBe(9);
    expect(id.domainid).toBe(0x0a0b);
    expect(id.megcap).toBe(0x3_0000_0000_0000_0001n);
  });

  test("NVMe-MI fields, bytes 253..255", () => {
    expect(id.nvmsr).toBe(3);
    expect(id.vwci).toBe(0x85);
    expect(id.mec).toBe(2);
  });

  test("NVM command set attributes, bytes 512..543", () => {
    expect(id.sqes).toBe(0x66);
    expect(id.sqesMin).toBe(64);
    expect(id.sqesMax).toBe(64);
    expect(id.cqes).toBe(0x44);
    expect(id.cqesMin).toBe(16);
    expect(id.cqesMax).toBe(16);
    expect(id.maxcmd).toBe(0x100);
    expect(id.nn).toBe(256);
    expect(id.oncs).toBe(0x015f);
    expect(id.fuses).toBe(1);
    expect(id.fna).toBe(4);
    expect(id.vwc).toBe(7);
    expect(id.awun).toBe(0xff);
    expect(id.awupf).toBe(7);
    expect(id.nvscc).toBe(1);
    expect(id.nwpc).toBe(3);
    expect(id.acwu).toBe(3);
    expect(id.ocfs).toBe(1);
    expect(id.sgls).toBe(0x0010_0001);
    expect(id.mnan).toBe(1024);
    expect(id.maxdna).toBe(0x4_0000_0000_0000_0002n);
    expect(id.maxcna).toBe(0x0102_0304);
  });

  test("SUBNQN and fabrics fields", () => {
    expect(id.subnqn).toBe("nqn.2019-08.org.qemu:serial-0123");
    expect(id.ioccsz).toBe(4);
    expect(id.iorcsz).toBe(1);
    expect(id.icdoff).toBe(0);
    expect(id.ctrattr).toBe(1);
    expect(id.msdbd).toBe(1);
    expect(id.ofcs).toBe(1);
  });

  test("power state descriptors: NPSS + 1 entries of 32 bytes from byte 2048", () => {
    expect(id.psd).toHaveLength(3);
    const [ps0, ps1, ps2] = id.psd;
    expect(ps0).toEqual({
      mp: 2500,
      mxps: 0,
      nops: false,
      enlat: 0,
      exlat: 0,
      rrt: 0,
      rrl: 0,
      rwt: 0,
      rwl: 0,
      idlp: 800,
      ips: 2,
      actp: 1500,
      apw: 2,
      aps: 2,
      maxPowerWatts: 25,
    });
    expect(ps1?.mp).toBe(5000);
    expect(ps1?.mxps).toBe(1);
    expect(ps1?.maxPowerWatts).toBe(0.5);
    expect(ps1?.nops).toBe(false);
    expect([ps1?.enlat, ps1?.exlat]).toEqual([50, 70]);
    expect([ps1?.rrt, ps1?.rrl, ps1?.rwt, ps1?.rwl]).toEqual([1, 2, 3, 4]);
    expect(ps2?.nops).toBe(true);
    expect(ps2?.mxps).toBe(0);
    expect(ps2?.maxPowerWatts).toBe(3);
    expect([ps2?.enlat, ps2?.exlat]).toEqual([5000, 9000]);
    // Reserved bits 7:5 of the RRT/RRL/RWT/RWL bytes are masked off.
    expect([ps2?.rrt, ps2?.rrl, ps2?.rwt, ps2?.rwl]).toEqual([2, 2, 2, 2]);
  });

  test("strings padded with NULs or mixed NUL/space are trimmed", () => {
    const p = controllerPage().text(4, 20, "ABC", 0x00).text(24, 40, "Model X  ", 0x00).text(64, 8, "1.0", 0x00);
    p.raw(64 + 3, [0x20, 0x00, 0x20]);
    const c = parseIdentifyController(p.bytes);
    expect(c.sn).toBe("ABC");
    expect(c.mn).toBe("Model X");
    expect(c.fr).toBe("1.0");
  });

  test("fields filling their whole width keep every character", () => {
    const sn = "S".repeat(19) + "Z";
    const mn = "M".repeat(39) + "N";
    const p = controllerPage().text(4, 20, sn).text(24, 40, mn).text(64, 8, "ABCDEFGH");
    const c = parseIdentifyController(p.bytes);
    expect(c.sn).toBe(sn);
    expect(c.mn).toBe(mn);
    expect(c.fr).toBe("ABCDEFGH");
  });

  test("SUBNQN filling all 256 bytes has no terminator", () => {
    const nqn = "nqn.2014-08.org.example:" + "x".repeat(256 - 24);
    const p = controllerPage().raw(768, [...new TextEncoder().encode(nqn)]);
    expect(parseIdentifyController(p.bytes).subnqn).toBe(nqn);
    // Byte 1024 is outside the field.
    p.u8(1024, 0x41);
    expect(parseIdentifyController(p.bytes).subnqn).toHaveLength(256);
  });

  test("NPSS 31 reads all 32 descriptors", () => {
    const p = controllerPage().u8(263, 31).u16(2048 + 31 * 32, 1234);
    const c = parseIdentifyController(p.bytes);
    expect(c.psd).toHaveLength(32);
    expect(c.psd[31]?.mp).toBe(1234);
  });

  test("NPSS above 31 is capped at the 32 descriptors the structure holds", () => {
    for (const npss of [32, 63, 64, 255]) {
      const c = parseIdentifyController(controllerPage().u8(263, npss).bytes);
      expect(c.npss).toBe(npss);
      expect(c.psd).toHaveLength(32);
    }
    // In a larger buffer too: nothing past byte 4095 is read.
    const backing = new Uint8Array(3 * IDENTIFY_DATA_SIZE).fill(0xee);
    backing.set(controllerPage().u8(263, 255).bytes, 7);
    expect(parseIdentifyController(backing.subarray(7)).psd).toHaveLength(32);
  });

  test("works on a view that does not start at offset 0 of its buffer", () => {
    const backing = new Uint8Array(IDENTIFY_DATA_SIZE + 100);
    backing.set(controllerPage().bytes, 100);
    const c = parseIdentifyController(backing.subarray(100));
    expect(c.vid).toBe(0x1b36);
    expect(c.nn).toBe(256);
    expect(c.sn).toBe("SN-0123456789");
  });

  test("short buffer is a ParseError", () => {
    expect(() => parseIdentifyController(new Uint8Array(4095))).toThrow(ParseError);
    expect(() => parseIdentifyController(new Uint8Array(0))).toThrow(/4096/);
  });
});

describe("formatVersion / mdtsBytes", () => {
  test("VER layout MJR 31:16, MNR 15:8, TER 7:0", () => {
    expect(formatVersion(0x00010400)).toBe("1.4.0");
    expect(formatVersion(0x00020000)).toBe("2.0.0");
    expect(formatVersion(0x00010302)).toBe("1.3.2");
    expect(formatVersion(0x00000000)).toBe("0.0.0");
    expect(formatVersion(0xffffffff)).toBe("65535.255.255");
    expect(formatVersion(-1)).toBe("65535.255.255");
  });

  test("formatVersion rejects what is not a 32-bit value", () => {
    for (const bad of [NaN, 1.5, 2 ** 32, -(2 ** 31) - 1]) expect(() => formatVersion(bad)).toThrow(InvalidArgumentError);
  });

  test("MDTS in pages of CAP.MPSMIN, 0 meaning unlimited", () => {
    expect(mdtsBytes(5, 4096)).toBe(128 * 1024);
    expect(mdtsBytes(0, 4096)).toBeNull();
    expect(mdtsBytes(255, 2 ** 27)).toBeNull(); // beyond 2^53 bytes: no limit in practice
    expect(mdtsBytes(40, 4096)).toBe(2 ** 52);
    expect(mdtsBytes(41, 4096)).toBeNull(); // 2^53 is not a safe integer
  });

  test("mdtsBytes rejects an MDTS outside 0..255 or a page size that is not a power of two", () => {
    for (const bad of [-1, 256, 1.5, NaN]) expect(() => mdtsBytes(bad, 4096)).toThrow(InvalidArgumentError);
    for (const bad of [0, -4096, 4095, 1.5, NaN, Infinity]) expect(() => mdtsBytes(5, bad)).toThrow(InvalidArgumentError);
  });
});

function namespacePage(): Page {
  const p = new Page()
    .u64(0, 0x1_0000_0000n) // NSZE, needs more than 32 bits
    .u64(8, 0x0_ffff_0000n) // NCAP
    .u64(16, 0x1234_5678n) // NUSE
    .u8(24, 0x1d) // NSFEAT
    .u8(25, 3) // NLBAF: four formats
    .u8(26, 0x12) // FLBAS: format 2, extended metadata
    .u8(27, 0x03) // MC
    .u8(28, 0x1f) // DPC
    .u8(29, 0x09) // DPS
    .u8(30, 0x01) // NMIC
    .u8(31, 0xff) // RESCAP
    .u8(32, 0x80) // FPI
    .u8(33, 0x09) // DLFEAT
    .u16(34, 0x0101) // NAWUN
    .u16(36, 0x0202) // NAWUPF
    .u16(38, 0x0303) // NACWU
    .u16(40, 0x0404) // NABSN
    .u16(42, 0x0505) // NABO
    .u16(44, 0x0606) // NABSPF
    .u16(46, 0x0707) // NOIOB
    .u128(48, 0x2_0000_0000_0000_0000n) // NVMCAP
    .u16(64, 0x0808) // NPWG
    .u16(66, 0x0909) // NPWA
    .u16(68, 0x0a0a) // NPDG
    .u16(70, 0x0b0b) // NPDA
    .u16(72, 0x0c0c) // NOWS
    .u16(74, 0x0d0d) // MSSRL
    .u32(76, 0x0e0e0e0e) // MCL
    .u8(80, 0x0f) // MSRC
    .u8(82, 0x02) // NULBAF
    .u32(92, 0x11223344) // ANAGRPID
    .u8(99, 0x01) // NSATTR
    .u16(100, 0x1111) // NVMSETID
    .u16(102, 0x2222) // ENDGID
    .raw(104, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
    .raw(120, [0x00, 0x25, 0x38, 0x5a, 0x91, 0xb0, 0x12, 0x34]);
  // LBAF0: 512 + 0; LBAF1: 512 + 8, RP 2; LBAF2: 4096 + 16, RP 1; LBAF3: 4096 + 64, RP 3.
  p.u32(128, 9 << 16);
  p.u32(132, (2 << 24) | (9 << 16) | 8);
  p.u32(136, (1 << 24) | (12 << 16) | 16);
  p.u32(140, (3 << 24) | (12 << 16) | 64);
  // LBAF4 is beyond NLBAF and must not be reported.
  p.u32(144, 13 << 16);
  return p;
}

describe("parseIdentifyNamespace", () => {
  const ns = parseIdentifyNamespace(namespacePage().bytes);

  test("sizes as bigint", () => {
    expect(ns.nsze).toBe(0x1_0000_0000n);
    expect(ns.ncap).toBe(0x0_ffff_0000n);
    expect(ns.nuse).toBe(0x1234_5678n);
    expect(ns.isActive).toBe(true);
  });

  test("bytes 24..103", () => {
    expect(ns.nsfeat).toBe(0x1d);
    expect(ns.nlbaf).toBe(3);
    expect(ns.flbas).toBe(0x12);
    expect(ns.mc).toBe(3);
    expect(ns.dpc).toBe(0x1f);
    expect(ns.dps).toBe(9);
    expect(ns.nmic).toBe(1);
    expect(ns.rescap).toBe(0xff);
    expect(ns.fpi).toBe(0x80);
    expect(ns.dlfeat).toBe(9);
    expect(ns.nawun).toBe(0x0101);
    expect(ns.nawupf).toBe(0x0202);
    expect(ns.nacwu).toBe(0x0303);
    expect(ns.nabsn).toBe(0x0404);
    expect(ns.nabo).toBe(0x0505);
    expect(ns.nabspf).toBe(0x0606);
    expect(ns.noiob).toBe(0x0707);
    expect(ns.nvmcap).toBe(0x2_0000_0000_0000_0000n);
    expect(ns.npwg).toBe(0x0808);
    expect(ns.npwa).toBe(0x0909);
    expect(ns.npdg).toBe(0x0a0a);
    expect(ns.npda).toBe(0x0b0b);
    expect(ns.nows).toBe(0x0c0c);
    expect(ns.mssrl).toBe(0x0d0d);
    expect(ns.mcl).toBe(0x0e0e0e0e);
    expect(ns.msrc).toBe(0x0f);
    expect(ns.nulbaf).toBe(2);
    expect(ns.anagrpid).toBe(0x11223344);
    expect(ns.nsattr).toBe(1);
    expect(ns.nvmsetid).toBe(0x1111);
    expect(ns.endgid).toBe(0x2222);
  });

  test("NGUID and EUI64 as hex in byte order", () => {
    expect(ns.nguid).toBe("00112233445566778899aabbccddeeff");
    expect(ns.nguid).toHaveLength(32);
    expect(ns.eui64).toBe("0025385a91b01234");
    expect(ns.eui64).toHaveLength(16);
  });

  test("LBA formats: NLBAF + 1 entries, MS 15:0, LBADS 23:16, RP 25:24", () => {
    expect(ns.lbaf).toEqual([
      { ms: 0, lbads: 9, rp: 0 },
      { ms: 8, lbads: 9, rp: 2 },
      { ms: 16, lbads: 12, rp: 1 },
      { ms: 64, lbads: 12, rp: 3 },
    ]);
  });

  test("current format derived from FLBAS", () => {
    expect(ns.formatIndex).toBe(2);
    expect(ns.extendedMetadata).toBe(true);
    expect(ns.lbaSize).toBe(4096);
    expect(ns.metadataSize).toBe(16);
  });

  test("FLBAS bits 6:5 extend the format index past 16", () => {
    const p = namespacePage().u8(25, 63); // 64 formats
    for (let i = 0; i < 64; i++) p.u32(128 + 4 * i, (9 << 16) | i);
    // Format 37 = 10_0101b: bits 3:0 = 0101b, bits 5:4 = 10b go to FLBAS bits 6:5.
    p.u32(128 + 4 * 37, (12 << 16) | 8);
    p.u8(26, (0b10 << 5) | 0b0101);
    const n = parseIdentifyNamespace(p.bytes);
    expect(n.lbaf).toHaveLength(64);
    expect(n.lbaf[63]).toEqual({ ms: 63, lbads: 9, rp: 0 });
    expect(n.formatIndex).toBe(37);
    expect(n.extendedMetadata).toBe(false);
    expect(n.lbaSize).toBe(4096);
    expect(n.metadataSize).toBe(8);
  });

  test("NLBAF above 63 is capped at 64 formats", () => {
    const p = namespacePage().u8(25, 0xff);
    expect(parseIdentifyNamespace(p.bytes).lbaf).toHaveLength(64);
  });

  test("a 512-byte format without metadata", () => {
    const n = parseIdentifyNamespace(namespacePage().u8(26, 0x00).bytes);
    expect(n.formatIndex).toBe(0);
    expect(n.lbaSize).toBe(512);
    expect(n.metadataSize).toBe(0);
    expect(n.extendedMetadata).toBe(false);
  });

  test("inactive NSID: an all-zero structure", () => {
    const n = parseIdentifyNamespace(new Uint8Array(IDENTIFY_DATA_SIZE));
    expect(n.isActive).toBe(false);
    expect(n.nsze).toBe(0n);
    expect(n.lbaSize).toBe(0);
    expect(n.metadataSize).toBe(0);
    expect(n.lbaf).toEqual([{ ms: 0, lbads: 0, rp: 0 }]);
    expect(n.nguid).toBe("0".repeat(32));
    expect(n.eui64).toBe("0".repeat(16));
  });

  test("FLBAS naming a format beyond NLBAF is a ParseError", () => {
    expect(() => parseIdentifyNamespace(namespacePage().u8(26, 0x04).bytes)).toThrow(ParseError);
  });

  test("current format with LBADS below 9 is a ParseError", () => {
    expect(() => parseIdentifyNamespace(namespacePage().u32(136, 0).bytes)).toThrow(/LBADS 0/);
  });

  test("short buffer is a ParseError", () => {
    expect(() => parseIdentifyNamespace(new Uint8Array(512))).toThrow(ParseError);
  });
});

describe("parseNamespaceList", () => {
  test("stops at the first zero entry", () => {
    const p = new Page().u32(0, 1).u32(4, 2).u32(8, 7).u32(12, 0).u32(16, 9);
    expect(parseNamespaceList(p.bytes)).toEqual([1, 2, 7]);
  });

  test("empty list", () => {
    expect(parseNamespaceList(new Uint8Array(IDENTIFY_DATA_SIZE))).toEqual([]);
  });

  test("a full list of 1024 NSIDs, including large values", () => {
    const p = new Page();
    for (let i = 0; i < 1024; i++) p.u32(4 * i, i + 1);
    p.u32(4 * 1023, 0xfffffffe);
    const list = parseNamespaceList(p.bytes);
    expect(list).toHaveLength(1024);
    expect(list[0]).toBe(1);
    expect(list[1022]).toBe(1023);
    expect(list[1023]).toBe(0xfffffffe);
  });

  test("short buffer is a ParseError", () => {
    expect(() => parseNamespaceList(new Uint8Array(4092))).toThrow(ParseError);
  });
});
