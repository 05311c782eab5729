/**
 * The command line's JSON against nvme-cli's own, byte for byte: fixtures are what Debian 12's
 * nvme-cli 2.3 printed for QEMU's emulated controller (`-o json`, and `-b` for the raw structures
 * the same output was made from), captured in the test guest. Then the cases QEMU does not show:
 * 64-bit values past 2^53, temperature sensors, optional keys, reserved bits nvme-cli prints raw.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseIdentifyController, parseIdentifyNamespace, parseNamespaceList } from "../../../lib/spec/identify.ts";
import { parseErrorLog, parseFirmwareSlotLog, parseSmartLog } from "../../../lib/spec/log.ts";
import { formatJson } from "../../../cli/json.ts";
import { errorLogJson, fwLogJson, idCtrlJson, idNsJson, listDeviceJson, listNsJson, smartLogJson } from "../../../cli/nvme-cli.ts";
import { idCtrlText } from "../../../cli/text.ts";

const dir = join(import.meta.dir, "..", "fixtures", "nvme-cli");
const bin = (name: string) => new Uint8Array(readFileSync(join(dir, name)));
const text = (name: string) => readFileSync(join(dir, name), "utf8");

describe("the same text as nvme-cli 2.3 for QEMU's controller", () => {
  test("id-ctrl -o json", () => {
    const raw = bin("id-ctrl.bin");
    expect(formatJson(idCtrlJson(raw, parseIdentifyController(raw))) + "\n").toBe(text("id-ctrl.json"));
  });

  test("id-ctrl (the plain layout)", () => {
    const raw = bin("id-ctrl.bin");
    expect(idCtrlText(raw, parseIdentifyController(raw), false)).toBe(text("id-ctrl.txt"));
  });

  test("id-ns -o json", () => {
    const raw = bin("id-ns-1.bin");
    expect(formatJson(idNsJson(raw, parseIdentifyNamespace(raw))) + "\n").toBe(text("id-ns-1.json"));
  });

  test("smart-log -o json, and -H -o json (critical_warning as an object)", () => {
    const s = parseSmartLog(bin("smart-log.bin"));
    expect(formatJson(smartLogJson(s, false)) + "\n").toBe(text("smart-log.json"));
    expect(formatJson(smartLogJson(s, true)) + "\n").toBe(text("smart-log-H.json"));
  });

  test("error-log -o json: unused entries included", () => {
    const raw = bin("error-log.bin");
    expect(formatJson(errorLogJson(parseErrorLog(raw, 1, { keepUnused: true }))) + "\n").toBe(text("error-log.json"));
  });

  test("fw-log -o json, keyed by the device name (nvme-cli's is the kernel's, nvme0)", () => {
    const raw = bin("fw-log.bin");
    expect(formatJson(fwLogJson(raw, parseFirmwareSlotLog(raw), "nvme0")) + "\n").toBe(text("fw-log.json"));
  });

  test("list-ns -o json", () => {
    const list = new Uint8Array(4096);
    new DataView(list.buffer).setUint32(0, 1, true);
    new DataView(list.buffer).setUint32(4, 2, true);
    expect(formatJson(listNsJson(parseNamespaceList(list))) + "\n").toBe(text("list-ns.json"));
  });

  test("list -o json: the same keys and values per namespace; DevicePath is the driver's", () => {
    const theirs = JSON.parse(text("list.json")).Devices as Record<string, unknown>[];
    const info = parseIdentifyNamespace(bin("id-ns-1.bin"));
    const ours = JSON.parse(formatJson(listDeviceJson({ nsid: 1, devicePath: "0000:00:04.0", firmware: "7.2.22", model: "QEMU NVMe Ctrl", serial: "deadbeef", info })));
    const ns1 = theirs.find((d) => d.NameSpace === 1)!;
    expect(Object.keys(ours)).toEqual(Object.keys(ns1));
    expect({ ...ours, DevicePath: ns1.DevicePath }).toEqual(ns1);
  });
});

describe("what QEMU's controller does not show", () => {
  test("u64 fields past 2^53 are exact JSON numbers; u128 counters are strings", () => {
    const raw = new Uint8Array(4096);
    const v = new DataView(raw.buffer);
    v.setBigUint64(0, 0xffff_ffff_ffff_fff1n, true); // NSZE
    v.setUint8(25, 0); // NLBAF
    v.setUint32(128, 9 << 16, true);
    v.setBigUint64(48, 5n, true); // NVMCAP low
    v.setBigUint64(56, 1n, true); // NVMCAP high
    const out = formatJson(idNsJson(raw, parseIdentifyNamespace(raw)));
    expect(out).toContain(`"nsze":18446744073709551601,`);
    expect(out).toContain(`"nvmcap":"18446744073709551621",`);
  });

  test("id-ns: NPWG..NOWS only with NSFEAT bit 4; LBAF bytes whole (reserved RP bits too)", () => {
    const raw = new Uint8Array(4096);
    const v = new DataView(raw.buffer);
    v.setBigUint64(0, 8n, true);
    v.setUint32(128, (0xfd << 24) | (12 << 16) | 8, true);
    let j = idNsJson(raw, parseIdentifyNamespace(raw));
    expect("npwg" in j).toBe(false);
    expect(j.lbafs).toEqual([{ ms: 8, ds: 12, rp: 0xfd }]);
    raw[24] = 0x10;
    j = idNsJson(raw, parseIdentifyNamespace(raw));
    expect(Object.keys(j).slice(Object.keys(j).indexOf("nvmsetid") + 1, Object.keys(j).indexOf("mssrl"))).toEqual(["npwg", "npwa", "npdg", "npda", "nows"]);
  });

  test("id-ctrl: no subnqn key when the controller reports none; power states as raw bytes", () => {
    const raw = new Uint8Array(4096);
    raw[263] = 1; // NPSS: two power states
    raw.set([0xc4, 0x09, 0, 0x03, 10, 0, 0, 0, 20, 0, 0, 0, 0xe1, 2, 3, 4, 50, 0, 0x80, 0, 60, 0, 0x86], 2048 + 32);
    const j = idCtrlJson(raw, parseIdentifyController(raw));
    expect("subnqn" in j).toBe(false);
    expect((j.psds as unknown[]).length).toBe(2);
    expect((j.psds as unknown[])[1]).toEqual({
      max_power: 2500,
      flags: 3,
      entry_lat: 10,
      exit_lat: 20,
      read_tput: 0xe1,
      read_lat: 2,
      write_tput: 3,
      write_lat: 4,
      idle_power: 50,
      idle_scale: 2,
      active_power: 60,
      active_power_work: 6,
      active_scale: 2,
    });
  });

  test("smart-log: temperature_sensor_N for each sensor that reports, between critical_comp_time and the thermal counters", () => {
    const raw = new Uint8Array(512);
    new DataView(raw.buffer).setUint16(200 + 2, 300, true); // sensor 2
    const keys = Object.keys(smartLogJson(parseSmartLog(raw), false));
    expect(keys.slice(keys.indexOf("critical_comp_time"), keys.indexOf("thm_temp1_trans_count") + 1)).toEqual([
      "critical_comp_time",
      "temperature_sensor_2",
      "thm_temp1_trans_count",
    ]);
  });

  test("fw-log: slots whose first byte is 0 are left out; spaces and non-printables shown as '.'", () => {
    const raw = new Uint8Array(512);
    raw[0] = 0x12;
    raw.set([0x31, 0x2e, 0x30, 0x20, 0x01, 0x41, 0x20, 0x20], 16); // slot 2: "1.0 \x01A  "
    const j = fwLogJson(raw, parseFirmwareSlotLog(raw), "0000:05:00.0");
    expect(j).toEqual({ "0000:05:00.0": { "Active Firmware Slot (afi)": 0x12, "Firmware Rev Slot 2": `${0x2020410120302e31n} (1.0..A..)` } });
  });
});

describe("formatJson: json-c's pretty layout", () => {
  test("objects, arrays, empty array, strings escaped, bigints as numbers", () => {
    expect(formatJson({ a: 1, b: "x\"y", c: [], d: [{ e: 2n ** 64n - 1n }], f: null, g: true })).toBe(
      '{\n  "a":1,\n  "b":"x\\"y",\n  "c":[\n  ],\n  "d":[\n    {\n      "e":18446744073709551615\n    }\n  ],\n  "f":null,\n  "g":true\n}',
    );
  });
});
