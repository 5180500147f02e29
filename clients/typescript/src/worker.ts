// The worker: claims executions of some queues, runs each with the handler registered for its
// job (or, with `runCommands`, its command), heartbeats every lease it holds in one call per
// heartbeat interval, and completes them, each report fenced by its lease token. Every claim
// declares what it runs (`handlers`: the registered job names; `commands`: `runCommands`),
// and the server offers it nothing else.
//
// Its promise is the ledger's: a lease it lost (the server says so, or the server stayed
// unreachable for longer than the lease) is never reported on again, and its handler's signal
// aborts at once. On stop it claims nothing more, lets running executions finish within a
// grace period, then hands the rest back so they run again at once.
import { hostname } from "node:os";
import { performance } from "node:perf_hooks";
import { Client } from "./client.js";
import { TailBuffer, startCommand, sweepOwner, truncateUtf8, type RunningCommand } from "./command.js";
import { Cancelled, HandedBack, JobwardError, LeaseLost, RunTimeout } from "./errors.js";
import type {
  ClaimedExecution,
  CompletionReport,
  CompletionResult,
  LeaseProof,
  LeaseReport,
  Outcome,
} from "./types.js";

/** What a handler is given. */
export interface Context {
  readonly executionId: number;
  readonly job: string;
  /** The run number (shared by its attempts). */
  readonly number: number;
  /** 1 for the first attempt, then 2, 3, ... for retries (and hand-backs). */
  readonly attempt: number;
  readonly maxAttempts: number;
  /** schedule, catch_up, manual or retry. */
  readonly trigger: string;
  readonly scheduledFor: Date | null;
  /** The trigger's payload (any JSON), or null. */
  readonly payload: unknown;
  /** The last checkpoint the previous attempt reported, or null. */
  readonly lastCheckpoint: unknown;
  readonly workerId: string;
  /** The W3C trace context of this attempt's run span, when the server exports traces. */
  readonly traceparent: string | null;
  /**
   * Aborts when the run must stop: its reason is a `LeaseLost` (stop now, nothing will be
   * reported), a `Cancelled` (it ends `cancelled`), a `RunTimeout` (it ends `timed_out`) or a
   * `HandedBack` (the worker is stopping; it runs again elsewhere).
   */
  readonly signal: AbortSignal;
  /** Reports progress (0 to 1) and optionally a phase; sent with the next heartbeat. */
  progress(fraction: number | null, options?: { phase?: string | null }): void;
  /** Reports a phase; sent with the next heartbeat. */
  phase(name: string | null): void;
  /**
   * Records a checkpoint (small JSON, at most 16 KiB) handed to a retry as `lastCheckpoint`.
   * Sent with the next heartbeat; the promise resolves once the server has it.
   */
  checkpoint(value: unknown): Promise<void>;
  /** Appends a line to the run's log tail (sent with its completion). */
  log(...args: unknown[]): void;
  /** Throws the signal's reason once the run must stop. */
  throwIfStopped(): void;
}

export type Handler = (ctx: Context) => unknown;

export interface Logger {
  info?(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export interface WorkerOptions {
  /** The server's base URL. */
  server: string;
  /** A token of role `worker`. */
  token?: string | undefined;
  /** Queues to claim from, in order of preference. */
  queues: string[];
  /** Executions run at once (default 1). */
  concurrency?: number;
  /** Stable per worker process (default HOST-PID). It owns the leases it claims. */
  workerId?: string;
  /** How long a stop lets running executions finish before handing them back (default 10 000 ms). */
  shutdownGraceMs?: number;
  /**
   * Also run jobs that have a `command` (`sh -c`, like `jobward worker`; default false). Without
   * it the server never offers them to this worker: it is offered only the handler jobs (a
   * queue and no command) registered with `handle()`.
   */
  runCommands?: boolean;
  /** Long poll of a claim (default 20 000 ms, at most 30 000). */
  waitMs?: number;
  /** Stop on SIGTERM and SIGINT while `run()` runs (default true). A second signal skips the grace. */
  handleSignals?: boolean;
  /** Where the worker logs; default: warnings and errors to stderr. `null`: nothing. */
  logger?: Logger | null;
  /** Bytes of log tail kept per run (default 60 KiB; the server keeps at most 64 KiB). */
  logTailBytes?: number;
}

/** What a worker run did. */
export interface WorkerReport {
  /** Completions the server recorded (any outcome). */
  completed: number;
  /** Leases lost: never reported on. */
  lost: number;
  /** Executions handed back (stopping, or no handler). */
  handedBack: number;
}

type StopWhy = "lost" | "cancel" | "timeout" | "handback";

interface Run {
  e: ClaimedExecution;
  proof: LeaseProof;
  ctl: AbortController;
  why: StopWhy | null;
  /** When the server last confirmed this lease (performance.now(), at the request's start). */
  confirmedAt: number;
  pending: { progress?: number | null; phase?: string | null; checkpoint?: unknown; seq: number; sentSeq: number };
  waiters: Array<{ seq: number; resolve: () => void; reject: (e: unknown) => void }>;
  log: TailBuffer;
  /** Resolves when the run is asked to stop (for any reason). */
  stopped: Promise<void>;
  wake: () => void;
  /** Resolves when its lease is lost. */
  lostP: Promise<void>;
  markLost: () => void;
  ended: boolean;
}

const MAX_TIMER = 2 ** 31 - 1;
const ERROR_MAX_BYTES = 4096;
const REPORT_BATCH = 500;
/** The server takes at most this many handler names per claim. */
const MAX_HANDLERS = 200;

const stderrLogger: Logger = {
  warn: (m, f) => console.error(`jobward worker: ${m}${f ? ` ${JSON.stringify(f)}` : ""}`),
  error: (m, f) => console.error(`jobward worker: error: ${m}${f ? ` ${JSON.stringify(f)}` : ""}`),
};

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.min(Math.max(ms, 0), MAX_TIMER)));

function errorText(err: unknown): { message: string; stack: string } {
  if (err instanceof Error) {
    return { message: err.message || err.name, stack: err.stack ?? `${err.name}: ${err.message}` };
  }
  const s = typeof err === "string" ? err : safeJson(err);
  return { message: s, stack: s };
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * A worker of the jobward worker protocol.
 *
 * ```ts
 * const worker = new Worker({ server, token, queues: ["reports"], concurrency: 4 });
 * worker.handle("send-report", async (ctx) => { ... });
 * await worker.run(); // until SIGTERM or worker.stop()
 * ```
 */
export class Worker {
  readonly client: Client;
  readonly workerId: string;
  readonly #o: Required<Omit<WorkerOptions, "token" | "logger">>;
  readonly #log: Logger | null;
  readonly #handlers = new Map<string, Handler>();
  /** The leases held: heartbeated until reported, handed back or lost. */
  readonly #runs = new Map<number, Run>();
  /** Slots taken: runs whose handler (or command) has not ended yet. */
  #busy = 0;
  #report: WorkerReport = { completed: 0, lost: 0, handedBack: 0 };
  #running: Promise<WorkerReport> | null = null;
  #stopping = false;
  #graceEnd = Infinity;
  #fatal: unknown = null;
  #claimCtl: AbortController | null = null;
  #changed: Array<() => void> = [];
  #beating: Promise<void> | null = null;
  #queue: Array<{ c: CompletionReport; run: Run; done: (r: CompletionResult | null) => void }> = [];
  #flushing = false;
  #unhandledBackoff = 0;

  constructor(options: WorkerOptions) {
    if (!options.queues?.length) throw new TypeError("a worker needs at least one queue");
    const concurrency = options.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new TypeError("concurrency must be an integer >= 1");
    this.workerId = options.workerId ?? `${hostname()}-${process.pid}`;
    this.client = new Client({ server: options.server, token: options.token });
    this.#o = {
      server: this.client.server,
      queues: [...options.queues],
      concurrency,
      workerId: this.workerId,
      shutdownGraceMs: options.shutdownGraceMs ?? 10_000,
      runCommands: options.runCommands ?? false,
      waitMs: Math.min(Math.max(options.waitMs ?? 20_000, 0), 30_000),
      handleSignals: options.handleSignals ?? true,
      logTailBytes: Math.min(options.logTailBytes ?? 60 * 1024, 64 * 1024),
    };
    this.#log = options.logger === undefined ? stderrLogger : options.logger;
  }

  /**
   * Registers the handler of a job: claimed executions of `job` run it. The next claim
   * declares it, so the server offers this worker the executions of `job` (a handler job: a
   * queue and no command) from then on.
   */
  handle(job: string, handler: Handler): this {
    if (!this.#handlers.has(job) && this.#handlers.size >= MAX_HANDLERS) {
      throw new RangeError(`a worker declares at most ${MAX_HANDLERS} handlers`);
    }
    this.#handlers.set(job, handler);
    return this;
  }

  /** Removes the handler of a job: later claims no longer declare it. */
  unhandle(job: string): this {
    this.#handlers.delete(job);
    return this;
  }

  /** The jobs this worker has handlers for, as its claims declare them. */
  get handlers(): string[] {
    return [...this.#handlers.keys()].sort();
  }

  /** Executions running now. */
  get running(): number {
    return this.#busy;
  }

  /**
   * Claims and runs until `stop()` (or SIGTERM/SIGINT), then drains: resolves with what it
   * did. Rejects when the server refuses the claim (a bad token, an unknown queue...).
   */
  run(): Promise<WorkerReport> {
    if (this.#running) throw new Error("this worker is already running");
    this.#running = this.#main();
    return this.#running;
  }

  /** Stops claiming, lets running executions finish within the grace, hands back the rest. */
  stop(options: { graceMs?: number } = {}): Promise<WorkerReport> {
    const grace = options.graceMs ?? this.#o.shutdownGraceMs;
    const end = performance.now() + grace;
    if (!this.#stopping || end < this.#graceEnd) this.#graceEnd = end;
    this.#stopping = true;
    this.#claimCtl?.abort(new Error("the worker is stopping"));
    this.#notify();
    return this.#running ?? Promise.resolve({ ...this.#report });
  }

  // ---- the loops ----------------------------------------------------------------------

  async #main(): Promise<WorkerReport> {
    const onSignal = (sig: NodeJS.Signals) => {
      if (this.#stopping) {
        this.#info("second signal: handing back what still runs now", { signal: sig });
        void this.stop({ graceMs: 0 });
      } else {
        this.#info("stopping: no more claims", { signal: sig, running: this.#busy });
        void this.stop();
      }
    };
    if (this.#o.handleSignals) {
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
    }
    if (this.#o.runCommands) {
      const killed = sweepOwner(this.workerId);
      if (killed.length) this.#log?.warn("killed processes left by a previous run of this worker id", { killed });
    }
    const hb = this.#heartbeatLoop();
    try {
      await this.#claimLoop();
      await this.#drain();
    } finally {
      this.#stopping = true;
      await hb;
      if (this.#o.handleSignals) {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
      }
    }
    this.#info("worker stopped", { ...this.#report });
    if (this.#fatal) throw this.#fatal;
    return { ...this.#report };
  }

  async #claimLoop(): Promise<void> {
    let backoff = 200;
    this.#info("worker started", {
      worker: this.workerId,
      queues: this.#o.queues,
      concurrency: this.#o.concurrency,
      handlers: this.handlers,
      commands: this.#o.runCommands,
    });
    if (this.#handlers.size === 0 && !this.#o.runCommands) {
      this.#log?.warn("this worker has no handler and does not run commands: it is offered nothing", { worker: this.workerId });
    }
    while (!this.#stopping) {
      const free = this.#o.concurrency - this.#busy;
      if (free <= 0) {
        await this.#waitChange(1000);
        continue;
      }
      if (this.#unhandledBackoff > 0) {
        // What we claimed last had no handler here (an old server that ignores `handlers`, or
        // a handler removed meanwhile): do not claim it again at once.
        await this.#waitChange(this.#unhandledBackoff, () => this.#stopping);
        if (this.#stopping) break;
      }
      const ctl = new AbortController();
      this.#claimCtl = ctl;
      let claimed: ClaimedExecution[];
      try {
        const r = await this.client.claim(
          {
            worker_id: this.workerId,
            queues: this.#o.queues,
            batch: Math.min(free, 100),
            wait_ms: this.#o.waitMs,
            handlers: this.handlers,
            commands: this.#o.runCommands,
          },
          { signal: ctl.signal },
        );
        claimed = r.executions;
        backoff = 200;
      } catch (err) {
        if (ctl.signal.aborted || this.#stopping) break;
        if (err instanceof JobwardError && err.transient) {
          this.#log?.warn("claim failed; retrying", { error: err.message, retryInMs: backoff });
          await this.#waitChange(backoff, () => this.#stopping);
          backoff = Math.min(backoff * 2, 5000);
          continue;
        }
        this.#log?.error("claim refused; stopping the worker", { error: (err as Error).message });
        this.#fatal = err;
        this.#stopping = true;
        this.#graceEnd = performance.now();
        break;
      } finally {
        this.#claimCtl = null;
      }
      if (claimed.length) this.#info("claimed", { executions: claimed.map((e) => e.id) });
      this.#dispatch(claimed);
    }
  }

  #dispatch(claimed: ClaimedExecution[]): void {
    const unhandled = new Map<string, ClaimedExecution[]>();
    let started = 0;
    for (const e of claimed) {
      const handler = this.#handlers.get(e.job);
      if (this.#stopping) {
        push(unhandled, "the worker is stopping and did not start it", e);
      } else if (handler) {
        this.#start(e, (run, ctx) => this.#runHandler(run, ctx, handler));
        started++;
      } else if (this.#o.runCommands && e.command.trim() !== "") {
        this.#start(e, (run) => this.#runCommand(run));
        started++;
      } else {
        push(unhandled, `no handler for ${e.job} on this worker`, e);
      }
    }
    if (unhandled.size && started === 0) {
      this.#unhandledBackoff = Math.min(Math.max(this.#unhandledBackoff * 2, 250), 2000);
    } else if (started) {
      this.#unhandledBackoff = 0;
    }
    for (const [reason, es] of unhandled) {
      this.#log?.warn("handing back at once", { reason, executions: es.map((e) => e.id) });
      void this.#release(
        es.map((e) => ({ id: e.id, attempt: e.attempt, lease_token: e.lease_token })),
        reason,
      );
    }
  }

  /** Waits for every running execution (until the grace ends), then hands back the rest. */
  async #drain(): Promise<void> {
    while (this.#busy > 0 && performance.now() < this.#graceEnd) {
      await this.#waitChange(this.#graceEnd - performance.now());
    }
    for (const run of this.#runs.values()) {
      if (!run.ended) this.#stopRun(run, "handback");
    }
    while (this.#busy > 0 || this.#runs.size > 0 || this.#queue.length > 0 || this.#flushing) {
      await this.#waitChange(100);
    }
  }

  #notify(): void {
    const w = this.#changed;
    this.#changed = [];
    for (const f of w) f();
  }

  /** Resolves when something changed (a run ended, a stop), or after `ms`. */
  #waitChange(ms: number, done?: () => boolean): Promise<void> {
    if (done?.()) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(finish, Math.min(Math.max(ms, 0), MAX_TIMER));
      const self = this;
      function finish() {
        clearTimeout(t);
        self.#changed = self.#changed.filter((f) => f !== finish);
        resolve();
      }
      this.#changed.push(finish);
    });
  }

  // ---- heartbeats ---------------------------------------------------------------------

  async #heartbeatLoop(): Promise<void> {
    let lastBeat = 0;
    while (!(this.#stopping && this.#busy === 0 && this.#runs.size === 0 && !this.#flushing)) {
      const runs = [...this.#runs.values()].filter((r) => r.why !== "lost");
      if (runs.length) {
        const interval = Math.max(100, Math.min(...runs.map((r) => r.e.heartbeat_interval_ms)));
        const now = performance.now();
        // One call per interval for every lease held (a run claimed since the last call waits
        // at most one interval: a third of its lease).
        if (now - lastBeat >= interval) {
          lastBeat = now;
          await this.#beat(runs);
        }
        this.#checkSilence();
      }
      await sleep(50);
    }
  }

  /** One heartbeat call renewing these leases, carrying their pending progress. */
  async #beat(runs: Run[]): Promise<void> {
    // Heartbeats are serialised: a flush waits for the loop's call and vice versa.
    while (this.#beating) await this.#beating;
    let finish!: () => void;
    this.#beating = new Promise((r) => (finish = r));
    try {
      runs = runs.filter((r) => r.why !== "lost" && this.#runs.get(r.e.id) === r);
      if (!runs.length) return;
      const sent = runs.map((r) => {
        const p = r.pending;
        const lease: LeaseReport = { ...r.proof };
        if (p.seq > p.sentSeq) {
          if (p.progress !== undefined) lease.progress = p.progress;
          if (p.phase !== undefined) lease.phase = p.phase;
          if (p.checkpoint !== undefined) lease.checkpoint = p.checkpoint;
        }
        return { r, seq: p.seq, lease };
      });
      const at = performance.now();
      const timeoutMs = Math.max(500, Math.min(...runs.map((r) => r.e.heartbeat_timeout_ms)));
      try {
        const resp = await this.client.heartbeat(
          { worker_id: this.workerId, leases: sent.map((s) => s.lease) },
          { timeoutMs },
        );
        const lost = new Map(resp.lost.map((l) => [l.id, l]));
        for (const s of sent) {
          if (lost.has(s.r.e.id)) continue;
          s.r.confirmedAt = Math.max(s.r.confirmedAt, at);
          const p = s.r.pending;
          if (s.seq > p.sentSeq) {
            p.sentSeq = s.seq;
            if (p.seq === s.seq) {
              delete p.progress;
              delete p.phase;
              delete p.checkpoint;
            }
          }
          s.r.waiters = s.r.waiters.filter((w) => {
            if (w.seq <= s.seq) w.resolve();
            return w.seq > s.seq;
          });
        }
        for (const l of resp.lost) {
          const run = this.#runs.get(l.id);
          if (run) {
            const what = l.status ? `it is ${l.status}${l.reason ? ` (${l.reason})` : ""}` : "it is gone";
            this.#lose(run, `the server refused its heartbeat: the lease was lost; ${what}`);
          }
        }
        for (const c of resp.cancel) {
          const run = this.#runs.get(c.id);
          if (run) this.#stopRun(run, "cancel", c.reason);
        }
      } catch (err) {
        if (err instanceof LeaseLost) {
          for (const s of sent) this.#lose(s.r, `the server refused its heartbeat: ${err.message}`);
        } else if (err instanceof JobwardError && !err.transient) {
          // Refused as a whole (e.g. a progress report it rejects): drop what it carried so that
          // the next heartbeat renews the leases.
          this.#log?.error("heartbeat refused; dropping the progress it carried", { error: err.message, code: err.code });
          for (const s of sent) {
            const p = s.r.pending;
            p.sentSeq = Math.max(p.sentSeq, s.seq);
            delete p.progress;
            delete p.phase;
            delete p.checkpoint;
            for (const w of s.r.waiters) if (w.seq <= s.seq) w.reject(err);
            s.r.waiters = s.r.waiters.filter((w) => w.seq > s.seq);
          }
        } else {
          this.#log?.warn("heartbeat failed", { error: (err as Error).message });
        }
      }
    } finally {
      this.#beating = null;
      finish();
    }
  }

  /** A lease not confirmed for longer than its length is lost: the server settles it. */
  #checkSilence(): void {
    const now = performance.now();
    for (const run of this.#runs.values()) {
      if (run.why !== "lost" && now - run.confirmedAt > run.e.heartbeat_timeout_ms) {
        this.#lose(run, "no heartbeat confirmed for longer than the lease (server unreachable): the server settles it");
      }
    }
  }

  #lose(run: Run, why: string): void {
    if (run.why === "lost") return;
    run.why = "lost";
    this.#report.lost++;
    this.#log?.warn("lease lost: stopping it now; it will not be reported", { execution: run.e.id, why });
    const err = new LeaseLost(`execution ${run.e.id}: lease lost (${why})`, run.e.id);
    for (const w of run.waiters) w.reject(err);
    run.waiters = [];
    if (this.#runs.get(run.e.id) === run) this.#runs.delete(run.e.id);
    run.ctl.abort(err);
    run.wake();
    run.markLost();
    this.#notify();
  }

  #stopRun(run: Run, why: Exclude<StopWhy, "lost">, cancelReason?: string): void {
    if (run.why !== null || run.ended) return;
    run.why = why;
    const reason =
      why === "cancel"
        ? new Cancelled(run.e.id, cancelReason ?? "cancel_requested")
        : why === "timeout"
          ? new RunTimeout(run.e.id, run.e.terminate_after_ms)
          : new HandedBack(run.e.id);
    this.#info("stopping a run", { execution: run.e.id, why, reason: cancelReason });
    run.ctl.abort(reason);
    run.wake();
  }

  // ---- running one execution ----------------------------------------------------------

  #start(e: ClaimedExecution, body: (run: Run, ctx: Context) => Promise<void>): void {
    const ctl = new AbortController();
    let wake!: () => void;
    let markLost!: () => void;
    const stopped = new Promise<void>((r) => (wake = r));
    const lostP = new Promise<void>((r) => (markLost = r));
    const run: Run = {
      e,
      proof: { id: e.id, attempt: e.attempt, lease_token: e.lease_token },
      ctl,
      why: null,
      // The lease was granted before the claim's answer arrived: count from now minus a margin.
      confirmedAt: performance.now() - 50,
      pending: { seq: 0, sentSeq: 0 },
      waiters: [],
      log: new TailBuffer(this.#o.logTailBytes),
      stopped,
      wake,
      lostP,
      markLost,
      ended: false,
    };
    this.#runs.set(e.id, run);
    this.#busy++;
    const ctx = this.#context(run);
    const timer = setTimeout(() => this.#stopRun(run, "timeout"), Math.min(e.terminate_after_ms, MAX_TIMER));
    this.#info("running", { execution: e.id, job: e.job, number: e.number, attempt: e.attempt });
    void body(run, ctx)
      .catch((err) => this.#log?.error("internal error while running an execution", { execution: e.id, error: String(err) }))
      .finally(() => {
        clearTimeout(timer);
        run.ended = true;
        this.#busy--;
        if (this.#runs.get(e.id) === run) this.#runs.delete(e.id);
        this.#notify();
      });
  }

  async #runHandler(run: Run, _ctx: Context, handler: Handler): Promise<void> {
    const settled = Promise.resolve()
      .then(() => handler(_ctx))
      .then(
        () => ({ ok: true as const }),
        (err: unknown) => ({ ok: false as const, err }),
      );
    // Until it settles, or until it was asked to stop and the kill grace passed (a handler
    // cannot be killed: one that ignores its signal is left behind and never reported).
    let result = await Promise.race([settled, run.stopped.then(() => null)]);
    if (result === null) {
      const grace = run.why === "lost" ? 0 : run.e.kill_grace_ms;
      result = await Promise.race([settled, sleep(grace).then(() => null)]);
      if (result === null && run.why === "lost") {
        // Keep its slot until it settles or the kill grace passes.
        await Promise.race([settled, sleep(run.e.kill_grace_ms)]);
      }
    }
    const why = run.why;
    if (why === "lost") return;
    const e = run.e;
    if (result === null) {
      run.log.write(`the handler did not stop within the kill grace (${e.kill_grace_ms} ms) after ${why}\n`);
    } else if (!result.ok) {
      const { stack } = errorText(result.err);
      if (!(why && result.err === run.ctl.signal.reason)) run.log.write(`${stack}\n`);
    }
    if (why === "handback" && !(result && result.ok)) {
      await this.#release([run.proof], "the worker is shutting down and the run did not finish within its grace period", run);
      return;
    }
    await this.#flushProgress(run);
    let outcome: Outcome;
    let error: string | null = null;
    if (why === "timeout") {
      outcome = "timed_out";
      error = `exceeded its run timeout (${e.terminate_after_ms} ms); stopped by its worker`;
    } else if (why === "cancel") {
      outcome = "cancelled";
      const reason = run.ctl.signal.reason as Cancelled;
      error = `cancelled (${reason.reason}); stopped by its worker`;
    } else if (result && result.ok) {
      outcome = "completed";
    } else {
      outcome = "failed";
      error = errorText(result!.err).message;
    }
    await this.#complete(run, { outcome, error });
  }

  async #runCommand(run: Run): Promise<void> {
    const e = run.e;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      JOBWARD_EXECUTION_ID: String(e.id),
      JOBWARD_NODE_ID: this.workerId,
      JOBWARD_JOB: e.job,
      JOBWARD_RUN_NUMBER: String(e.number),
      JOBWARD_ATTEMPT: String(e.attempt),
      JOBWARD_TRIGGER: e.trigger,
      JOBWARD_WORKER_ID: this.workerId,
      JOBWARD_SERVER_URL: this.client.server,
      JOBWARD_LEASE_TOKEN: e.lease_token,
    };
    for (const k of ["JOBWARD_SCHEDULED_FOR", "JOBWARD_PAYLOAD", "JOBWARD_CHECKPOINT", "TRACEPARENT"]) delete env[k];
    if (e.scheduled_for) env.JOBWARD_SCHEDULED_FOR = e.scheduled_for;
    if (e.payload !== undefined && e.payload !== null) env.JOBWARD_PAYLOAD = JSON.stringify(e.payload);
    if (e.checkpoint !== undefined && e.checkpoint !== null) env.JOBWARD_CHECKPOINT = JSON.stringify(e.checkpoint);
    if (e.traceparent) env.TRACEPARENT = e.traceparent;
    const cmd: RunningCommand = startCommand(e.command, env, run.log);
    let killTimer: NodeJS.Timeout | undefined;
    const onStop = () => {
      if (run.why === "lost") {
        cmd.signalGroup("SIGKILL");
      } else {
        cmd.signalGroup("SIGTERM");
        killTimer = setTimeout(() => cmd.signalGroup("SIGKILL"), e.kill_grace_ms);
      }
    };
    void run.stopped.then(onStop);
    // A lease lost after a graceful stop still kills at once.
    void run.lostP.then(() => cmd.signalGroup("SIGKILL"));
    const exit = await cmd.done;
    clearTimeout(killTimer);
    const why = run.why;
    if (why === "lost") return;
    if (why === "handback") {
      await this.#release([run.proof], "the worker is shutting down and the run did not finish within its grace period", run);
      return;
    }
    let outcome: Outcome;
    let error: string | null = null;
    if (exit.spawnError) {
      outcome = "failed";
      error = `could not start \`sh -c\`: ${exit.spawnError.message}`;
    } else if (why === "timeout") {
      outcome = "timed_out";
      error = "exceeded its run timeout; stopped by its worker";
    } else if (why === "cancel") {
      outcome = "cancelled";
    } else if (exit.code === 0) {
      outcome = "completed";
    } else {
      outcome = "failed";
    }
    await this.#complete(run, { outcome, error, exit_code: exit.code, signal: exit.signal });
  }

  #context(run: Run): Context {
    const e = run.e;
    const guard = () => {
      if (run.ctl.signal.aborted) throw run.ctl.signal.reason;
    };
    return {
      executionId: e.id,
      job: e.job,
      number: e.number,
      attempt: e.attempt,
      maxAttempts: e.max_attempts,
      trigger: e.trigger,
      scheduledFor: e.scheduled_for ? new Date(e.scheduled_for) : null,
      payload: e.payload ?? null,
      lastCheckpoint: e.checkpoint ?? null,
      workerId: this.workerId,
      traceparent: e.traceparent ?? null,
      signal: run.ctl.signal,
      progress(fraction, options) {
        guard();
        if (fraction !== null && !(typeof fraction === "number" && fraction >= 0 && fraction <= 1)) {
          throw new RangeError(`progress must be between 0 and 1, not ${fraction}`);
        }
        if (options && options.phase !== undefined) checkPhase(options.phase);
        run.pending.progress = fraction;
        if (options && options.phase !== undefined) run.pending.phase = options.phase;
        run.pending.seq++;
      },
      phase(name) {
        guard();
        checkPhase(name);
        run.pending.phase = name;
        run.pending.seq++;
      },
      checkpoint(value) {
        guard();
        const text = JSON.stringify(value);
        if (text === undefined) throw new TypeError("a checkpoint must be a JSON value");
        if (Buffer.byteLength(text) > 16 * 1024) throw new RangeError("a checkpoint is at most 16 KiB of JSON");
        run.pending.checkpoint = JSON.parse(text);
        const seq = ++run.pending.seq;
        const p = new Promise<void>((resolve, reject) => run.waiters.push({ seq, resolve, reject }));
        p.catch(() => {}); // not awaiting it is fine
        return p;
      },
      log(...args) {
        const line = args.map((a) => (typeof a === "string" ? a : a instanceof Error ? (a.stack ?? a.message) : safeJson(a))).join(" ");
        run.log.write(`${line}\n`);
      },
      throwIfStopped() {
        guard();
      },
    };
  }

  // ---- reports ------------------------------------------------------------------------

  /** Sends what the handler reported and no heartbeat carried yet, before the completion. */
  async #flushProgress(run: Run): Promise<void> {
    if (run.pending.seq > run.pending.sentSeq && run.why !== "lost") {
      await this.#beat([run]);
    }
  }

  async #complete(
    run: Run,
    r: { outcome: Outcome; error?: string | null; exit_code?: number | null; signal?: number | null },
  ): Promise<void> {
    if (run.why === "lost") return;
    const c: CompletionReport = {
      ...run.proof,
      outcome: r.outcome,
      error: r.error ? truncateUtf8(r.error, ERROR_MAX_BYTES) : null,
      exit_code: r.exit_code ?? null,
      signal: r.signal ?? null,
      log_tail: run.log.text(),
    };
    const res = await new Promise<CompletionResult | null>((done) => {
      this.#queue.push({ c, run, done });
      void this.#flush();
    });
    if (!res) return;
    switch (res.result) {
      case "accepted":
      case "repeated":
        this.#report.completed++;
        this.#info("recorded", { execution: res.id, outcome: r.outcome, status: res.status });
        break;
      case "lease_lost":
        this.#lose(run, "the server refused its completion");
        break;
      default:
        this.#log?.error("completion rejected", { execution: res.id, error: res.error?.message });
    }
  }

  /** Sends queued completions in batches: whatever ended while a call was in flight goes next. */
  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#queue.length) {
        const batch = this.#queue.splice(0, REPORT_BATCH);
        let delay = 100;
        let pending = batch;
        while (pending.length) {
          // Never report for a lease lost meanwhile.
          pending = pending.filter((p) => {
            if (p.run.why === "lost") p.done(null);
            return p.run.why !== "lost";
          });
          if (!pending.length) break;
          try {
            const resp = await this.client.completeBatch({ worker_id: this.workerId, completions: pending.map((p) => p.c) });
            pending.forEach((p, i) => p.done(resp.results[i] ?? null));
            pending = [];
          } catch (err) {
            if (err instanceof JobwardError && err.transient) {
              this.#log?.warn("could not record these ends yet; retrying", { count: pending.length, error: err.message });
              await sleep(delay);
              delay = Math.min(delay * 2, 2000);
              continue;
            }
            this.#log?.error("could not record these ends; the server settles them at their lease expiry", {
              count: pending.length,
              error: (err as Error).message,
            });
            for (const p of pending) p.done(null);
            pending = [];
          }
        }
      }
    } finally {
      this.#flushing = false;
      this.#notify();
    }
  }

  /** Hands leases back; with `run`, retries while its lease may be alive. */
  async #release(leases: LeaseProof[], reason: string, run?: Run): Promise<void> {
    let delay = 100;
    for (;;) {
      if (run && run.why === "lost") return;
      try {
        const r = await this.client.release({ worker_id: this.workerId, leases, reason });
        this.#report.handedBack += r.released.length;
        if (r.released.length) this.#info("handed back: it runs again at once", { executions: r.released, retries: r.retries });
        for (const l of r.lost) {
          this.#log?.warn("hand-back refused: the lease was already lost", { execution: l.id });
          if (run && run.e.id === l.id) this.#lose(run, "the server refused its hand-back");
        }
        return;
      } catch (err) {
        if (err instanceof LeaseLost) {
          if (run) this.#lose(run, "the server refused its hand-back");
          return;
        }
        if (run && err instanceof JobwardError && err.transient) {
          await sleep(delay);
          delay = Math.min(delay * 2, 2000);
          continue;
        }
        this.#log?.warn("could not hand back; the server settles it at its lease expiry", {
          executions: leases.map((l) => l.id),
          error: (err as Error).message,
        });
        return;
      }
    }
  }

  #info(message: string, fields?: Record<string, unknown>): void {
    this.#log?.info?.(message, fields);
  }
}

function checkPhase(phase: string | null): void {
  if (phase !== null && (typeof phase !== "string" || [...phase].length > 200)) {
    throw new RangeError("a phase is a string of at most 200 characters");
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const a = m.get(k);
  if (a) a.push(v);
  else m.set(k, [v]);
}
