import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DeviceError, InvalidArgumentError, NativeError } from "../../lib/errors.ts";
import {
  configRead,
  configWrite,
  enableBusMaster,
  findPciDevice,
  parseBdf,
  PCI_CLASS_NVME,
  PCI_COMMAND,
  type PciDevice,
} from "../../lib/pci.ts";

describe("parseBdf", () => {
  test("adds the default domain", () => {
    expect(parseBdf("05:00.0")).toBe("0000:05:00.0");
    expect(parseBdf("ff:1f.7")).toBe("0000:ff:1f.7");
  });

  test("pads short fields", () => {
    expect(parseBdf("0000:5:0.0")).toBe("0000:05:00.0");
    expect(parseBdf("1:2:3.4")).toBe("0001:02:03.4");
  });

  test("lower-cases hex and trims whitespace", () => {
    expect(parseBdf("0000:0A:1F.3")).toBe("0000:0a:1f.3");
    expect(parseBdf("ABCD:EF:0c.1")).toBe("abcd:ef:0c.1");
    expect(parseBdf("  05:00.0\n")).toBe("0000:05:00.0");
  });

  for (const bad of ["zz", "", "05:00", "05:00.8", "05:00.", "0000:05:00:0", "12345:05:00.0", "005:00.0", "05:00.0.0", "g5:00.0"]) {
    test(`rejects ${JSON.stringify(bad)} naming the input`, () => {
      let err: unknown;
      try {
        parseBdf(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toContain(`"${bad}"`);
    });
  }

  test("rejects a device number over 0x1f", () => {
    expect(() => parseBdf("05:20.0")).toThrow(InvalidArgumentError);
    expect(() => parseBdf("05:20.0")).toThrow(/"05:20\.0".*0x20.*0x1f/);
    expect(() => parseBdf("0000:05:ff.0")).toThrow(InvalidArgumentError);
  });
});

/** A fake /sys/bus/pci/devices with one directory per device. */
const root = mkdtempSync(join(tmpdir(), "libnvm-pci-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function fakeDevice(
  bdf: string,
  opts: { classCode?: number; driver?: string; iommuGroup?: string; command?: number } = {},
): string {
  const dir = join(root, bdf);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "vendor"), "0x1b36\n");
  writeFileSync(join(dir, "device"), "0x0010\n");
  writeFileSync(join(dir, "subsystem_vendor"), "0x1af4\n");
  writeFileSync(join(dir, "subsystem_device"), "0x1100\n");
  writeFileSync(join(dir, "class"), `0x${(opts.classCode ?? PCI_CLASS_NVME).toString(16).padStart(6, "0")}\n`);
  const config = Buffer.alloc(64);
  config.writeUInt16LE(0x1b36, 0);
  config.writeUInt16LE(0x0010, 2);
  config.writeUInt16LE(opts.command ?? 0, 4);
  writeFileSync(join(dir, "config"), config);
  if (opts.driver) {
    const drv = join(root, "..drivers", opts.driver);
    mkdirSync(drv, { recursive: true });
    symlinkSync(drv, join(dir, "driver"));
  }
  if (opts.iommuGroup) symlinkSync(join(root, "..groups", opts.iommuGroup), join(dir, "iommu_group"));
  return dir;
}

describe("findPciDevice", () => {
  test("a missing BDF is a DeviceError that points at lspci", () => {
    let err: unknown;
    try {
      findPciDevice("0000:42:00.0", root);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeviceError);
    expect((err as Error).message).toContain("0000:42:00.0");
    expect((err as Error).message).toContain("lspci");
  });

  test("reads identity from the sysfs files; no driver link means unbound", () => {
    const dir = fakeDevice("0000:05:00.0");
    const d = findPciDevice("0000:05:00.0", root);
    expect(d).toEqual({
      bdf: "0000:05:00.0",
      path: dir,
      vendor: 0x1b36,
      device: 0x0010,
      subsystemVendor: 0x1af4,
      subsystemDevice: 0x1100,
      classCode: 0x010802,
      driver: undefined,
      iommuGroup: undefined,
    });
  });

  test("the bound driver and IOMMU group are the basenames of their links", () => {
    fakeDevice("0000:06:00.0", { driver: "nvme", iommuGroup: "12" });
    const d = findPciDevice("0000:06:00.0", root);
    expect(d.driver).toBe("nvme");
    expect(d.iommuGroup).toBe("12");
    fakeDevice("0000:07:00.0", { driver: "vfio-pci" });
    expect(findPciDevice("0000:07:00.0", root).driver).toBe("vfio-pci");
  });

  test("a device of another class is a DeviceError with its class code", () => {
    fakeDevice("0000:08:00.0", { classCode: 0x020000 }); // Ethernet
    expect(() => findPciDevice("0000:08:00.0", root)).toThrow(DeviceError);
    expect(() => findPciDevice("0000:08:00.0", root)).toThrow(/0000:08:00\.0 is not an NVMe controller \(class 0x020000/);
    // AHCI: same base class and subclass, other programming interface.
    fakeDevice("0000:09:00.0", { classCode: 0x010601 });
    expect(() => findPciDevice("0000:09:00.0", root)).toThrow(/class 0x010601/);
  });
});

describe("config space through the native layer", () => {
  const dev = (bdf: string): PciDevice => findPciDevice(bdf, root);

  test("configRead reads 1, 2 and 4 bytes little-endian", () => {
    fakeDevice("0000:0a:00.0", { command: 0x0102 });
    const d = dev("0000:0a:00.0");
    expect(configRead(d, 0, 2)).toBe(0x1b36);
    expect(configRead(d, 2, 2)).toBe(0x0010);
    expect(configRead(d, 0, 4)).toBe(0x00101b36);
    expect(configRead(d, 1, 1)).toBe(0x1b);
    expect(configRead(d, PCI_COMMAND, 2)).toBe(0x0102);
  });

  test("configWrite writes exactly `width` bytes", () => {
    const dir = fakeDevice("0000:0b:00.0");
    const d = dev("0000:0b:00.0");
    configWrite(d, 8, 1, 0x1ff); // only the low byte
    configWrite(d, 12, 2, 0xabcd);
    configWrite(d, 16, 4, 0xdeadbeef);
    const b = readFileSync(join(dir, "config"));
    expect(b.length).toBe(64);
    expect([...b.subarray(8, 10)]).toEqual([0xff, 0x00]);
    expect(b.readUInt32LE(12)).toBe(0xabcd);
    expect(b.readUInt32LE(16)).toBe(0xdeadbeef);
  });

  test("enableBusMaster sets Memory Space and Bus Master, keeps other bits, returns the old value", () => {
    const dir = fakeDevice("0000:0c:00.0", { command: 0x0400 }); // Interrupt Disable
    expect(enableBusMaster(dev("0000:0c:00.0"))).toBe(0x0400);
    expect(readFileSync(join(dir, "config")).readUInt16LE(4)).toBe(0x0406);
    // Already enabled: nothing changes.
    expect(enableBusMaster(dev("0000:0c:00.0"))).toBe(0x0406);
    expect(readFileSync(join(dir, "config")).readUInt16LE(4)).toBe(0x0406);
  });

  test("a read past the end of config space is a NativeError", () => {
    fakeDevice("0000:0d:00.0");
    let err: unknown;
    try {
      configRead(dev("0000:0d:00.0"), 64, 4);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeError);
    expect((err as NativeError).errno).toBe(5); // EIO: short read
    expect((err as NativeError).path).toBe(join(root, "0000:0d:00.0", "config"));
  });
});
