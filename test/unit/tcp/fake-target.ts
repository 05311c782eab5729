/**
 * The test side of target-worker.ts: start the scripted NVMe/TCP target in a Worker, change its
 * faults, read its counters and namespace bytes. Every wait is bounded.
 */
import { Worker } from "node:worker_threads";
import type { Faults } from "./target-worker.ts";

export const TEST_NQN = "nqn.2024-01.io.libnvm:test";

export interface TargetStats {
  connections: number;
  commands: number;
  connects: { qid: number; cntlid: number; sqsize: number; cattr: number; kato: number; hostnqn: string; subnqn: string; inCapsule: boolean }[];
  keepAlives: number;
  h2cPdus: number;
  r2ts: number;
  icreqs: { hpda: number; hd: boolean; dd: boolean; maxr2t: number }[];
  controllers: { cntlid: number; cc: number; csts: number; kato: number; conns: number }[];
}

export class FakeTarget {
  readonly #w: Worker;
  port = 0;

  private constructor(w: Worker) {
    this.#w = w;
  }

  static async start(faults: Faults = {}): Promise<FakeTarget> {
    const t = new FakeTarget(new Worker(new URL("./target-worker.ts", import.meta.url)));
    await t.#ask({ type: "set", faults });
    const r = (await t.#ask({ type: "listen" })) as { port: number };
    t.port = r.port;
    return t;
  }

  #ask(m: unknown): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the fake target did not answer ${JSON.stringify(m)} within 5 s`)), 5000);
      this.#w.once("message", (r: Record<string, unknown>) => {
        clearTimeout(timer);
        resolve(r);
      });
      this.#w.postMessage(m);
    });
  }

  uri(query = "", nqn = TEST_NQN): string {
    return `nvme+tcp://127.0.0.1:${this.port}/${nqn}${query ? `?${query}` : ""}`;
  }

  async set(faults: Faults): Promise<void> {
    await this.#ask({ type: "set", faults });
  }

  async resetFaults(): Promise<void> {
    await this.#ask({ type: "reset-faults" });
  }

  /** Stop listening and close every connection (nvmet: the port removed). */
  async unlisten(): Promise<void> {
    await this.#ask({ type: "unlisten" });
  }

  /** Listen again on the same port. */
  async listen(): Promise<void> {
    await this.#ask({ type: "listen" });
  }

  async stats(): Promise<TargetStats> {
    return ((await this.#ask({ type: "stats" })) as { stats: TargetStats }).stats;
  }

  async peek(nsid: number, offset: number, length: number): Promise<Uint8Array> {
    return ((await this.#ask({ type: "peek", nsid, offset, length })) as { bytes: Uint8Array }).bytes;
  }

  async poke(nsid: number, offset: number, bytes: Uint8Array): Promise<void> {
    await this.#ask({ type: "poke", nsid, offset, bytes });
  }

  async stop(): Promise<void> {
    await this.#w.terminate();
  }
}
