/**
 * A one-line progress bar on stderr for long transfers: shown only when stderr is a terminal and
 * the transfer is large enough to be worth watching, never in --json mode.
 */
import { writeSync } from "node:fs";

const MiB = 1024 * 1024;
/** Smaller transfers finish before a bar is readable. */
export const PROGRESS_MIN_BYTES = 8 * MiB;
const BAR_WIDTH = 30;
const REDRAW_MS = 100;

export class Progress {
  readonly #label: string;
  readonly #total: number;
  readonly #enabled: boolean;
  readonly #t0 = performance.now();
  #lastDraw = 0;
  #drawn = false;

  /** `enabled` defaults to: stderr is a TTY and `totalBytes` exceeds PROGRESS_MIN_BYTES. */
  constructor(label: string, totalBytes: number, enabled = process.stderr.isTTY === true && totalBytes > PROGRESS_MIN_BYTES) {
    this.#label = label;
    this.#total = totalBytes;
    this.#enabled = enabled;
  }

  /** Redraw with `doneBytes` done, at most every 100 ms (and always at 100%). */
  update(doneBytes: number): void {
    if (!this.#enabled) return;
    const now = performance.now();
    if (now - this.#lastDraw < REDRAW_MS && doneBytes < this.#total) return;
    this.#lastDraw = now;
    const frac = this.#total > 0 ? Math.min(doneBytes / this.#total, 1) : 1;
    const filled = Math.round(frac * BAR_WIDTH);
    const secs = (now - this.#t0) / 1000;
    const rate = secs > 0 ? doneBytes / MiB / secs : 0;
    const line =
      `${this.#label} [${"#".repeat(filled)}${" ".repeat(BAR_WIDTH - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ` +
      `${(doneBytes / MiB).toFixed(1)}/${(this.#total / MiB).toFixed(1)} MiB ${rate.toFixed(1)} MiB/s`;
    // Synchronous: the transfer loop does not yield to the event loop between commands.
    writeSync(2, `\r${line}\x1b[K`);
    this.#drawn = true;
  }

  /** Erase the bar so the summary line starts clean. */
  done(): void {
    if (this.#drawn) writeSync(2, "\r\x1b[K");
    this.#drawn = false;
  }
}

/**
 * A one-line status on stderr for a command whose length is unknown (Format NVM): redrawn on each
 * tick() when stderr is a terminal, erased by done().
 */
export class Ticker {
  readonly #enabled: boolean;
  #drawn = false;

  /** `enabled` defaults to: stderr is a TTY. */
  constructor(enabled = process.stderr.isTTY === true) {
    this.#enabled = enabled;
  }

  tick(text: string): void {
    if (!this.#enabled) return;
    writeSync(2, `\r${text}\x1b[K`);
    this.#drawn = true;
  }

  done(): void {
    if (this.#drawn) writeSync(2, "\r\x1b[K");
    this.#drawn = false;
  }
}
