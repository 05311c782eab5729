/**
 * CI check of the GPU kernels (no GPU needed, nvcc needed): every kernel of c/cuda/nvm_queue.cu
 * compiles for every architecture the installed nvcc supports from sm_75 on, with ptxas's
 * register and spill figures per architecture; the fatbin holds SASS for each of them plus PTX of
 * the newest; the PTX holds the ordering the queue core relies on (gpu.md section 3): the
 * system-scope fence before a doorbell, the st.mmio doorbell store, acquire loads of the phase
 * tag at system scope, scoped atomics, the %globaltimer deadlines; and the fatbin CMake built into
 * c/build (what the npm package ships) is the same set.
 *
 * One line per check ("kernels: ok ..." / "kernels: FAIL ..."), then "kernels: N passed, M
 * failed"; exit 1 on any failure. No nvcc is a failure (with the way to install it), not a skip.
 *
 *   bun test/cuda/kernel-check.ts
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");
const SOURCE = join(ROOT, "c", "cuda", "nvm_queue.cu");
const INCLUDE = join(ROOT, "c", "include");
const KERNELS = ["nvmq_shared_kernel", "nvmq_coop_kernel"];

let passed = 0;
let failed = 0;
function report(ok: boolean, name: string, detail: string): void {
  if (ok) passed++;
  else failed++;
  console.log(`kernels: ${ok ? "ok" : "FAIL"} ${name} ${detail}`);
}

function sh(cmd: string[]): { code: number; out: string; err: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString() };
}

/** (kind, arch) of each entry of a fatbin: kind 1 = PTX, 2 = ELF (SASS). */
export function fatbinEntries(b: Uint8Array): { kind: number; arch: number }[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b.length < 16 || v.getUint32(0, true) !== 0xba55ed50) throw new Error("not a fatbin (magic 0xBA55ED50 missing)");
  const headerSize = v.getUint16(6, true);
  const size = Number(v.getBigUint64(8, true));
  const out: { kind: number; arch: number }[] = [];
  for (let e = headerSize; e < headerSize + size; ) {
    const kind = v.getUint16(e, true);
    const entryHeader = v.getUint32(e + 4, true);
    const payload = Number(v.getBigUint64(e + 8, true));
    out.push({ kind, arch: v.getUint32(e + 0x1c, true) });
    e += entryHeader + payload;
  }
  return out;
}

const nvcc = Bun.which("nvcc") ?? (existsSync("/usr/local/cuda/bin/nvcc") ? "/usr/local/cuda/bin/nvcc" : null);
if (!nvcc) {
  report(false, "nvcc", "not found: install the CUDA toolkit (12.8 or later; nvcc on PATH or in /usr/local/cuda/bin) to check the kernels");
} else {
  const version = /release (\d+)\.(\d+)/.exec(sh([nvcc, "--version"]).out);
  report(version !== null && Number(version[1]) * 100 + Number(version[2]) >= 1208, "nvcc", `${nvcc}: CUDA ${version?.[1]}.${version?.[2]} (12.8 or later needed: scoped __nv_atomic_*)`);
  const archs = [...sh([nvcc, "--list-gpu-code"]).out.matchAll(/^sm_(\d+)$/gm)].map((m) => Number(m[1])).filter((a) => a >= 75).sort((a, b) => a - b);
  const newest = archs.at(-1)!;
  const dir = mkdtempSync(join(tmpdir(), "libnvm-kernels-"));
  try {
    const gencode = [...archs.flatMap((a) => ["-gencode", `arch=compute_${a},code=sm_${a}`]), "-gencode", `arch=compute_${newest},code=compute_${newest}`];
    const fatbin = join(dir, "nvm_queue.fatbin");
    const t0 = performance.now();
    const b = sh([nvcc, "-fatbin", "-O3", "-std=c++17", `-I${INCLUDE}`, "-Xptxas", "-v", ...gencode, "-o", fatbin, SOURCE]);
    report(b.code === 0, "build", `${archs.length} architectures (sm_${archs.join(", sm_")}) + compute_${newest} PTX in ${((performance.now() - t0) / 1000).toFixed(1)} s${b.code ? `: ${b.err.trim().split("\n").slice(-3).join(" | ")}` : ""}`);
    if (b.code === 0) {
      // ptxas -v: "Compiling entry function 'K' for 'sm_N'" then "Used R registers" and the spill line.
      const usage = new Map<string, { regs: number; spills: number }>();
      let at = "";
      for (const l of b.err.split("\n")) {
        const c = /Compiling entry function '(\w+)' for 'sm_(\d+)'/.exec(l);
        if (c) at = `${c[1]}@${c[2]}`;
        const s = /(\d+) bytes spill stores, (\d+) bytes spill loads/.exec(l);
        if (s && at) usage.set(at, { regs: usage.get(at)?.regs ?? 0, spills: Number(s[1]) + Number(s[2]) });
        const r = /Used (\d+) registers/.exec(l);
        if (r && at) usage.set(at, { regs: Number(r[1]), spills: usage.get(at)?.spills ?? 0 });
      }
      for (const k of KERNELS) {
        const missing = archs.filter((a) => !usage.has(`${k}@${a}`));
        const figs = archs.map((a) => `sm_${a} ${usage.get(`${k}@${a}`)?.regs ?? "?"}r/${usage.get(`${k}@${a}`)?.spills ?? "?"}B`).join(", ");
        report(missing.length === 0, `ptxas-${k}`, missing.length ? `no ptxas report for sm_${missing.join(", sm_")}` : `registers / spill bytes: ${figs}`);
      }
      const entries = fatbinEntries(new Uint8Array(readFileSync(fatbin)));
      const sass = new Set(entries.filter((e) => e.kind === 2).map((e) => e.arch));
      const ptx = entries.filter((e) => e.kind === 1).map((e) => e.arch);
      const noSass = archs.filter((a) => !sass.has(a));
      report(noSass.length === 0 && ptx.includes(newest), "fatbin", noSass.length ? `no SASS for sm_${noSass.join(", sm_")}` : `SASS for ${sass.size} architectures, PTX for compute_${ptx.join(", compute_")}`);
      // The instructions the ordering rests on, in the PTX of the oldest and the newest architecture.
      for (const a of [archs[0]!, newest]) {
        const ptxFile = join(dir, `nvm_queue_${a}.ptx`);
        const p = sh([nvcc, "-ptx", "-O3", "-std=c++17", `-I${INCLUDE}`, `-arch=compute_${a}`, "-o", ptxFile, SOURCE]);
        if (p.code !== 0) {
          report(false, `ptx-compute_${a}`, p.err.trim().split("\n").slice(-2).join(" | "));
          continue;
        }
        const text = readFileSync(ptxFile, "utf8");
        const want: [string, RegExp][] = [
          ["fence.sc.sys before each doorbell", /fence\.sc\.sys;/],
          ["st.mmio.relaxed.sys doorbell store", /st\.mmio\.relaxed\.sys\.global\.u32/],
          ["st.relaxed.sys doorbell store (ordinary memory)", /st\.relaxed\.sys(\.global)?\.(b|u)32/],
          ["ld.acquire.sys of the phase tag", /ld\.acquire\.sys(\.global)?\.(b|u)32/],
          ["gpu-scope atomics for tickets", /atom\.(add\.)?(relaxed\.)?gpu(\.global)?\.(add\.)?(u|b)32|atom\.relaxed\.gpu/],
          ["release stores", /st\.release\.(gpu|sys)/],
          ["%globaltimer deadlines", /%globaltimer/],
          ["nanosleep backoff", /nanosleep\.u32/],
          ["both kernels", new RegExp(KERNELS.map((k) => `\\.entry ${k}`).join("[\\s\\S]*"))],
        ];
        const missing = want.filter(([, re]) => !re.test(text)).map(([w]) => w);
        report(missing.length === 0, `ptx-compute_${a}`, missing.length ? `missing: ${missing.join("; ")}` : want.map(([w]) => w).join(", "));
      }
    }
    // What CMake built (and the npm package ships), when it was built with this nvcc.
    const built = join(ROOT, "c", "build", "nvm_queue.fatbin");
    if (existsSync(built)) {
      const entries = fatbinEntries(new Uint8Array(readFileSync(built)));
      const sass = new Set(entries.filter((e) => e.kind === 2).map((e) => e.arch));
      const noSass = archs.filter((a) => !sass.has(a));
      report(noSass.length === 0, "c/build", noSass.length ? `c/build/nvm_queue.fatbin lacks sm_${noSass.join(", sm_")}: rebuild it (cmake --build c/build)` : `c/build/nvm_queue.fatbin: SASS for all ${archs.length} architectures`);
    } else {
      report(false, "c/build", "c/build/nvm_queue.fatbin was not built although nvcc is here: cmake -S c -B c/build && cmake --build c/build");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
console.log(`kernels: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
