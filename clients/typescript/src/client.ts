import { JobwardError, LeaseLost } from "./errors.js";
import type {
  BackfillRequest,
  BackfillResponse,
  CancelResponse,
  ClaimRequest,
  ClaimResponse,
  CompleteBatchRequest,
  CompleteBatchResponse,
  CompleteRequest,
  CompleteResponse,
  ErrorCode,
  EventList,
  EventView,
  ExchangeRequest,
  ExchangeResponse,
  ExecutionPage,
  ExecutionPatch,
  ExecutionView,
  HealthView,
  HeartbeatRequest,
  HeartbeatResponse,
  JobDefinition,
  JobDeleteResponse,
  JobDetail,
  JobList,
  JobPutResponse,
  LogView,
  ProgressRequest,
  ReleaseRequest,
  ReleaseResponse,
  Status,
  TriggerBatchRequest,
  TriggerBatchResponse,
  TriggerItem,
  TriggerItemResult,
  TriggerRequest,
  TriggerResponse,
} from "./types.js";

export interface ClientOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:8080`. */
  server: string;
  /** A bearer token (`Authorization: Bearer TOKEN`); none when the server has no tokens. */
  token?: string | undefined;
  /** Per-request timeout, ms (default 45 000: longer than the longest long poll). */
  timeoutMs?: number;
}

export interface TriggerOptions {
  /** Any JSON value (at most 16 KiB), given to the run as `ctx.payload` / `JOBWARD_PAYLOAD`. */
  payload?: unknown;
  /** The same key returns the execution the first trigger created instead of a new one. */
  idempotencyKey?: string;
  /** -1000 to 1000; higher is claimed first. */
  priority?: number;
  /** Not before this time: a delayed run. */
  runAt?: Date | string;
  /** Not before this long from now: a number of milliseconds, or a duration such as "90s". */
  delay?: number | string;
}

export interface BulkTrigger extends TriggerOptions {
  job: string;
}

export interface ExecutionQuery {
  job?: string;
  /** One state or several. */
  status?: Status | Status[];
  since?: Date | string;
  until?: Date | string;
  /** Keyset pagination: pass the previous page's `next_before`. */
  before?: number;
  limit?: number;
}

/**
 * A JSON merge patch of a job's definition (`PATCH /api/jobs/{name}`): the fields given
 * replace the stored ones, `null` resets a field to the server's default, absent fields stay.
 */
export type JobPatch = JobDefinition;

export interface DeleteJobOptions {
  /** Cancel its live executions (queued ones at once, running ones are asked to stop); without
   * it, a job with live executions is not deleted (409 `conflict`). */
  cancel?: boolean;
}

/** When a queued execution may start: exactly one of `runAt` and `delay`. */
export type RescheduleOptions =
  | { /** Not before this time. */ runAt: Date | string; delay?: never }
  | {
      /** Not before this long from now: milliseconds (0 or less: at once), or a duration such as "10m". */
      delay: number | string;
      runAt?: never;
    };

export interface RequestOptions {
  /** Aborts the request (the promise rejects with the signal's reason). */
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
}

const TERMINAL: ReadonlySet<string> = new Set(["completed", "failed", "timed_out", "cancelled", "skipped"]);

/** True for a state an execution never leaves. */
export function isTerminal(status: Status): boolean {
  return TERMINAL.has(status);
}

function iso(t: Date | string): string {
  return t instanceof Date ? t.toISOString() : t;
}

function triggerBody(o: TriggerOptions): TriggerRequest {
  const body: TriggerRequest = {};
  if (o.payload !== undefined) body.payload = o.payload;
  if (o.idempotencyKey !== undefined) body.idempotency_key = o.idempotencyKey;
  if (o.priority !== undefined) body.priority = o.priority;
  if (o.runAt !== undefined) body.run_at = iso(o.runAt);
  // A number of milliseconds; 0 (or less) means no delay (the server refuses a zero duration).
  if (typeof o.delay === "number") {
    if (o.delay > 0) body.delay = `${Math.ceil(o.delay)}ms`;
  } else if (o.delay !== undefined) {
    body.delay = o.delay;
  }
  return body;
}

/**
 * A client of the jobward HTTP API: triggers, executions, events, cancels, job definitions
 * (role "admin"), and the worker protocol's calls (claim, heartbeat, complete, release) for
 * hand-written workers.
 */
export class Client {
  /** The base URL, without a trailing slash. */
  readonly server: string;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;

  constructor(options: ClientOptions | string) {
    const o: ClientOptions = typeof options === "string" ? { server: options } : options;
    const base = o.server.replace(/\/+$/, "");
    if (!/^https?:\/\//.test(base)) {
      throw new JobwardError("protocol", `server URL '${o.server}' must start with http:// or https://`, 0);
    }
    this.server = base;
    this.#token = o.token;
    this.#timeoutMs = o.timeoutMs ?? 45_000;
  }

  /** Sends one request; answers the parsed JSON body, or throws `JobwardError` / `LeaseLost`. */
  async request<T>(method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE", path: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    const ctl = new AbortController();
    const timer = setTimeout(
      () => ctl.abort(new JobwardError("unreachable", `${method} ${path}: no answer within ${timeoutMs} ms`, 0)),
      timeoutMs,
    );
    const outer = options.signal;
    const onAbort = () => ctl.abort(outer?.reason);
    if (outer) {
      if (outer.aborted) onAbort();
      else outer.addEventListener("abort", onAbort, { once: true });
    }
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    try {
      let res: Response;
      let text: string;
      try {
        res = await fetch(this.server + path, {
          method,
          headers,
          body: body === undefined ? null : JSON.stringify(body),
          signal: ctl.signal,
        });
        text = await res.text();
      } catch (err) {
        if (ctl.signal.aborted) throw ctl.signal.reason;
        const cause = err as { cause?: { code?: string; message?: string }; message?: string };
        const why = cause.cause?.code ?? cause.cause?.message ?? cause.message ?? String(err);
        throw new JobwardError("unreachable", `${method} ${path}: server unreachable (${why})`, 0, { cause: err });
      }
      if (res.ok) {
        try {
          return (text === "" ? null : JSON.parse(text)) as T;
        } catch (err) {
          throw new JobwardError("protocol", `${method} ${path}: the answer is not JSON`, res.status, { cause: err });
        }
      }
      let code: string | undefined;
      let message: string | undefined;
      try {
        const e = JSON.parse(text) as { error?: { code?: string; message?: string } };
        code = e.error?.code;
        message = e.error?.message;
      } catch {}
      if (code === "lease_lost") throw new LeaseLost(message ?? "lease lost", undefined, res.status);
      if (code) throw new JobwardError(code as ErrorCode, message ?? code, res.status);
      if (res.status === 404) {
        throw new JobwardError("protocol", `${method} ${path}: not found: is ${this.server} a jobward server?`, 404);
      }
      throw new JobwardError("unknown", `${method} ${path}: HTTP ${res.status} ${res.statusText}`, res.status);
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }
  }

  // ---- jobs and executions -------------------------------------------------------------

  /** Queues a run of `job` (201 created; `created: false` when the idempotency key matched). */
  trigger(job: string, options: TriggerOptions = {}, request?: RequestOptions): Promise<TriggerResponse> {
    return this.request("POST", `/api/jobs/${encodeURIComponent(job)}/trigger`, triggerBody(options), request);
  }

  /** Up to 1,000 triggers in one call and one transaction; each is answered alone, in order. */
  async triggerMany(triggers: BulkTrigger[], request?: RequestOptions): Promise<TriggerItemResult[]> {
    const body: TriggerBatchRequest = {
      triggers: triggers.map(({ job, ...o }): TriggerItem => ({ job, ...triggerBody(o) })),
    };
    const r = await this.request<TriggerBatchResponse>("POST", "/api/triggers", body, request);
    return r.results;
  }

  /** One page of executions, newest first. */
  executions(query: ExecutionQuery = {}, request?: RequestOptions): Promise<ExecutionPage> {
    const q = new URLSearchParams();
    if (query.job !== undefined) q.set("job", query.job);
    if (query.status !== undefined) q.set("status", [query.status].flat().join(","));
    if (query.since !== undefined) q.set("since", iso(query.since));
    if (query.until !== undefined) q.set("until", iso(query.until));
    if (query.before !== undefined) q.set("before", String(query.before));
    if (query.limit !== undefined) q.set("limit", String(query.limit));
    const qs = q.toString();
    return this.request("GET", `/api/executions${qs ? `?${qs}` : ""}`, undefined, request);
  }

  execution(id: number, request?: RequestOptions): Promise<ExecutionView> {
    return this.request("GET", `/api/executions/${id}`, undefined, request);
  }

  /** Its event log: every transition, note and refused report, oldest first. */
  async events(id: number, request?: RequestOptions): Promise<EventView[]> {
    const r = await this.request<EventList>("GET", `/api/executions/${id}/events`, undefined, request);
    return r.events;
  }

  /** The tail of its output, or null. */
  async log(id: number, request?: RequestOptions): Promise<string | null> {
    const r = await this.request<LogView>("GET", `/api/executions/${id}/log`, undefined, request);
    return r.log ?? null;
  }

  /** Queued: cancelled at once (`cancelled`); running: its owner is asked to stop (`requested`). */
  cancel(id: number, request?: RequestOptions): Promise<CancelResponse> {
    return this.request("POST", `/api/executions/${id}/cancel`, {}, request);
  }

  jobs(request?: RequestOptions): Promise<JobList> {
    return this.request("GET", "/api/jobs", undefined, request);
  }

  /** The job, its recent executions, and who serves it (`served`, in words, and `workers`). */
  job(name: string, request?: RequestOptions): Promise<JobDetail> {
    return this.request("GET", `/api/jobs/${encodeURIComponent(name)}`, undefined, request);
  }

  // ---- job definitions (role "admin") ---------------------------------------------------

  /**
   * Creates or replaces the job `name` with this whole definition (the fields of a `[[job]]`
   * of the configuration file; absent fields take the server's `[defaults]`). `created` tells
   * which. A handler job (a `queue`, no `command`) needs nothing more; a definition with a
   * `command` is refused (403 `forbidden`) unless the server sets `[server] api_commands = true`.
   * Jobs of the configuration file cannot be changed through the API (409 `conflict`).
   */
  putJob(name: string, definition: JobDefinition, request?: RequestOptions): Promise<JobPutResponse> {
    return this.request("PUT", `/api/jobs/${encodeURIComponent(name)}`, definition, request);
  }

  /**
   * Changes some fields of a job the API defined (a JSON merge patch: `null` resets a field to
   * its default). `{ paused: true | false }` alone also works on jobs of the configuration file.
   */
  patchJob(name: string, patch: JobPatch, request?: RequestOptions): Promise<JobPutResponse> {
    return this.request("PATCH", `/api/jobs/${encodeURIComponent(name)}`, patch, request);
  }

  /**
   * Deletes a job the API defined (its history remains). With live executions it is refused
   * (409 `conflict`) unless `cancel: true`, which cancels them; `cancelled` lists them.
   */
  deleteJob(name: string, options: DeleteJobOptions = {}, request?: RequestOptions): Promise<JobDeleteResponse> {
    const qs = options.cancel === undefined ? "" : `?cancel=${options.cancel ? "true" : "false"}`;
    return this.request("DELETE", `/api/jobs/${encodeURIComponent(name)}${qs}`, undefined, request);
  }

  /**
   * Fires each instant of the job's schedule in [`from`, `to`] that has no execution yet
   * (at most 1,000): `created` lists the new executions, `already` counts the instants left
   * alone. Role "operate".
   */
  backfill(name: string, from: Date | string, to: Date | string, request?: RequestOptions): Promise<BackfillResponse> {
    const body: BackfillRequest = { from: iso(from), to: iso(to) };
    return this.request("POST", `/api/jobs/${encodeURIComponent(name)}/backfill`, body, request);
  }

  /** Moves the start of a queued execution: `{ runAt }` or `{ delay }` (from now). Role "operate". */
  reschedule(id: number, options: RescheduleOptions, request?: RequestOptions): Promise<ExecutionView> {
    const body: ExecutionPatch = {};
    if (options.runAt !== undefined) body.run_at = iso(options.runAt);
    if (typeof options.delay === "number") {
      // The server refuses a zero duration: "at once" is the smallest one.
      body.delay = `${Math.max(1, Math.ceil(options.delay))}ms`;
    } else if (options.delay !== undefined) {
      body.delay = options.delay;
    }
    return this.request("PATCH", `/api/executions/${id}`, body, request);
  }

  // ---- the server ----------------------------------------------------------------------

  health(request?: RequestOptions): Promise<HealthView> {
    return this.request("GET", "/api/system/health", undefined, request);
  }

  /** The server's OpenAPI document. */
  openapi(request?: RequestOptions): Promise<Record<string, unknown>> {
    return this.request("GET", "/api/openapi.json", undefined, request);
  }

  /** Polls an execution until it is terminal (or until `timeoutMs`, then throws). */
  async waitFor(id: number, options: { timeoutMs?: number; intervalMs?: number } = {}): Promise<ExecutionView> {
    const until = Date.now() + (options.timeoutMs ?? 60_000);
    for (;;) {
      const e = await this.execution(id);
      if (isTerminal(e.status)) return e;
      if (Date.now() >= until) {
        throw new JobwardError("timeout", `execution ${id} is still ${e.status} after ${options.timeoutMs ?? 60_000} ms`, 0);
      }
      await new Promise((r) => setTimeout(r, options.intervalMs ?? 100));
    }
  }

  // ---- the worker protocol (role "worker") --------------------------------------------

  /**
   * Claims executions of `queues`. With `handlers` (job names) only those handler jobs are
   * offered, plus jobs with a command when `commands` is true; with neither, everything on
   * the queues is offered.
   */
  claim(body: ClaimRequest, request?: RequestOptions): Promise<ClaimResponse> {
    const timeoutMs = request?.timeoutMs ?? Math.max(this.#timeoutMs, (body.wait_ms ?? 0) + 15_000);
    return this.request("POST", "/api/worker/claim", body, { ...request, timeoutMs });
  }

  /** Renews every lease in it; throws `LeaseLost` only when every lease in it is lost. */
  heartbeat(body: HeartbeatRequest, request?: RequestOptions): Promise<HeartbeatResponse> {
    return this.request("POST", "/api/worker/heartbeat", body, request);
  }

  /** Throws `LeaseLost` when the lease was lost: nothing changed. */
  complete(body: CompleteRequest, request?: RequestOptions): Promise<CompleteResponse> {
    return this.request("POST", "/api/worker/complete", body, request);
  }

  /** Many completions, each fenced by its own lease and answered alone. */
  completeBatch(body: CompleteBatchRequest, request?: RequestOptions): Promise<CompleteBatchResponse> {
    return this.request("POST", "/api/worker/complete-batch", body, request);
  }

  /** Completes these, then claims the next, in one call (`handlers`/`commands` as for `claim`). */
  exchange(body: ExchangeRequest, request?: RequestOptions): Promise<ExchangeResponse> {
    const timeoutMs = request?.timeoutMs ?? Math.max(this.#timeoutMs, (body.wait_ms ?? 0) + 15_000);
    return this.request("POST", "/api/worker/exchange", body, { ...request, timeoutMs });
  }

  /** Hands leases back: each is queued again at once, not counted against its retries. */
  release(body: ReleaseRequest, request?: RequestOptions): Promise<ReleaseResponse> {
    return this.request("POST", "/api/worker/release", body, request);
  }

  /** Progress from inside a run, proven by its lease token (what `jobward heartbeat` sends). */
  progress(id: number, body: ProgressRequest, request?: RequestOptions): Promise<ExecutionView> {
    return this.request("POST", `/api/executions/${id}/progress`, body, request);
  }
}
