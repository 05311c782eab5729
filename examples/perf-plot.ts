/**
 * The latency histogram of examples/perf.ts as a standalone SVG: completions per logarithmic
 * latency bin (20 per decade, bars, left axis), the share of commands slower than each latency
 * (a line on a logarithmic right axis: the tail the bars cannot show), the percentiles p50, p99
 * and p99.9 marked, IOPS and mean in the subtitle. No dependencies: plain SVG text.
 */
import { bucketRange, HIST_BUCKETS, type LatencyHistogram } from "./perf-engine.ts";

const W = 900;
const H = 420;
const M = { left: 70, right: 70, top: 60, bottom: 55 };
const BINS_PER_DECADE = 20;

function esc(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

function fmtUs(us: number): string {
  if (us >= 1000) return `${+(us / 1000).toPrecision(3)} ms`;
  if (us >= 1) return `${+us.toPrecision(3)} µs`;
  return `${+(us * 1000).toPrecision(3)} ns`;
}

export interface PlotSummary {
  readonly iops: number;
  readonly ios: number;
  readonly latencyUs: { readonly min: number; readonly mean: number; readonly max: number; readonly percentiles: Record<string, number> };
}

export function latencySvg(h: LatencyHistogram, title: string, s: PlotSummary): string {
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(`Completion latency: ${title}`)}</text>`,
    `<text x="${W / 2}" y="42" text-anchor="middle" fill="#444">${esc(
      `${s.ios} commands, ${Math.round(s.iops)} IOPS; min ${fmtUs(s.latencyUs.min)}, mean ${fmtUs(s.latencyUs.mean)}, max ${fmtUs(s.latencyUs.max)}`,
    )}</text>`,
  );
  if (h.count === 0) {
    out.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no completions measured</text></svg>`);
    return out.join("\n") + "\n";
  }
  // x: log10 of microseconds, whole decades around [min, max].
  const minUs = Math.max(h.min / 1000, 0.001);
  const maxUs = Math.max(h.max / 1000, minUs * 1.001);
  const lo = Math.floor(Math.log10(minUs));
  const hi = Math.max(Math.ceil(Math.log10(maxUs)), lo + 1);
  const nBins = (hi - lo) * BINS_PER_DECADE;
  const bins = new Float64Array(nBins);
  for (let b = 0; b < HIST_BUCKETS; b++) {
    const c = h.counts[b]!;
    if (c === 0) continue;
    const { low, width } = bucketRange(b);
    const mid = Math.max((low + (width - 1) / 2) / 1000, 10 ** lo);
    const i = Math.min(nBins - 1, Math.max(0, Math.floor((Math.log10(mid) - lo) * BINS_PER_DECADE)));
    bins[i]! += c;
  }
  const peak = Math.max(...bins) / h.count;
  // y: share of all completions, rounded up to a tidy scale.
  const steps = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1];
  const yMax = steps.find((v) => v >= peak) ?? 1;
  const x = (log: number) => M.left + ((log - lo) / (hi - lo)) * plotW;
  const y = (frac: number) => M.top + plotH - (frac / yMax) * plotH;

  // grid and axes
  for (let i = 0; i <= 5; i++) {
    const f = (yMax * i) / 5;
    out.push(
      `<line x1="${M.left}" x2="${M.left + plotW}" y1="${y(f).toFixed(1)}" y2="${y(f).toFixed(1)}" stroke="#e5e5e5"/>`,
      `<text x="${M.left - 6}" y="${(y(f) + 4).toFixed(1)}" text-anchor="end">${+(f * 100).toFixed(1)}%</text>`,
    );
  }
  for (let d = lo; d <= hi; d++) {
    for (const k of d < hi ? [1, 2, 5] : [1]) {
      const lx = x(d + Math.log10(k));
      out.push(
        `<line x1="${lx.toFixed(1)}" x2="${lx.toFixed(1)}" y1="${M.top}" y2="${M.top + plotH}" stroke="${k === 1 ? "#d0d0d0" : "#eeeeee"}"/>`,
        `<text x="${lx.toFixed(1)}" y="${M.top + plotH + 16}" text-anchor="middle"${k === 1 ? "" : ' fill="#777"'}>${esc(fmtUs(k * 10 ** d))}</text>`,
      );
    }
  }
  out.push(
    `<line x1="${M.left}" x2="${M.left + plotW}" y1="${M.top + plotH}" y2="${M.top + plotH}" stroke="black"/>`,
    `<line x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${M.top + plotH}" stroke="black"/>`,
    `<text x="${M.left + plotW / 2}" y="${H - 12}" text-anchor="middle">completion latency (log scale)</text>`,
    `<text transform="translate(16 ${M.top + plotH / 2}) rotate(-90)" text-anchor="middle">share of commands per bin (${BINS_PER_DECADE} bins per decade)</text>`,
  );
  // bars
  const bw = plotW / nBins;
  for (let i = 0; i < nBins; i++) {
    if (bins[i] === 0) continue;
    const f = bins[i]! / h.count;
    const top = y(f);
    out.push(`<rect x="${(M.left + i * bw + 0.5).toFixed(1)}" y="${top.toFixed(1)}" width="${Math.max(bw - 1, 1).toFixed(1)}" height="${(M.top + plotH - top).toFixed(1)}" fill="#4477aa"/>`);
  }
  // tail: share of commands slower than the upper edge of each bin, log scale on the right
  const decades = Math.max(1, Math.ceil(Math.log10(h.count)));
  const yTail = (share: number) => M.top + (Math.min(-Math.log10(Math.max(share, 10 ** -decades)), decades) / decades) * plotH;
  for (let d = 0; d <= decades; d++) {
    out.push(`<text x="${M.left + plotW + 6}" y="${(yTail(10 ** -d) + 4).toFixed(1)}" fill="#333">${+(100 * 10 ** -d).toPrecision(1)}%</text>`);
  }
  out.push(
    `<text transform="translate(${W - 12} ${M.top + plotH / 2}) rotate(90)" text-anchor="middle" fill="#333">share of commands slower (line, log scale)</text>`,
  );
  let slower = h.count;
  const pts: string[] = [];
  for (let i = 0; i < nBins; i++) {
    slower -= bins[i]!;
    if (slower <= 0) {
      pts.push(`${x(lo + (i + 1) / BINS_PER_DECADE).toFixed(1)},${yTail(0).toFixed(1)}`);
      break;
    }
    pts.push(`${x(lo + (i + 1) / BINS_PER_DECADE).toFixed(1)},${yTail(slower / h.count).toFixed(1)}`);
  }
  out.push(`<polyline points="${x(lo).toFixed(1)},${yTail(1).toFixed(1)} ${pts.join(" ")}" fill="none" stroke="#333" stroke-width="1.5"/>`);
  // percentiles
  const marks: [string, string][] = [
    ["p50", "#228833"],
    ["p99", "#ee7733"],
    ["p99.9", "#cc3311"],
  ];
  marks.forEach(([k, color], j) => {
    const v = s.latencyUs.percentiles[k];
    if (v === undefined || v <= 0) return;
    const lx = x(Math.min(Math.max(Math.log10(v), lo), hi));
    out.push(
      `<line x1="${lx.toFixed(1)}" x2="${lx.toFixed(1)}" y1="${M.top}" y2="${M.top + plotH}" stroke="${color}" stroke-dasharray="5,3" stroke-width="1.5"/>`,
      `<text x="${(lx + 4).toFixed(1)}" y="${M.top + 14 + 14 * j}" fill="${color}">${esc(`${k} ${fmtUs(v)}`)}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
