import type { ErrorCode } from "./types.js";

/**
 * An error answered by a jobward server (`{"error": {"code", "message"}}`), or a failure to
 * reach it (`code` "unreachable", `status` 0).
 */
export class JobwardError extends Error {
  /** The API's stable code (`lease_lost`, `not_found`, ...), or "unreachable" / "protocol". */
  readonly code: ErrorCode | "unreachable" | "protocol";
  /** The HTTP status; 0 when the server could not be reached. */
  readonly status: number;

  constructor(code: JobwardError["code"], message: string, status: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "JobwardError";
    this.code = code;
    this.status = status;
  }

  /** Worth trying again: the server was unreachable, busy or failing. */
  get transient(): boolean {
    return this.code === "unreachable" || this.status >= 500 || this.code === "timeout" || this.code === "unavailable";
  }
}

/**
 * The lease of an execution was lost: the ledger already ended it (or gave it to someone
 * else). Every report for it is refused. As `ctx.signal.reason`, it means "stop now, and
 * do not report".
 */
export class LeaseLost extends JobwardError {
  /** The execution, when known. */
  readonly executionId: number | undefined;

  constructor(message: string, executionId?: number, status = 409) {
    super("lease_lost", message, status);
    this.name = "LeaseLost";
    this.executionId = executionId;
  }
}

/** A cancel was requested for the execution (`ctx.signal.reason` when the server asks to stop). */
export class Cancelled extends Error {
  /** The server's reason (`cancel_requested`, `replaced`, ...). */
  readonly reason: string;
  readonly executionId: number;

  constructor(executionId: number, reason: string) {
    super(`execution ${executionId}: cancel requested (${reason})`);
    this.name = "Cancelled";
    this.reason = reason;
    this.executionId = executionId;
  }
}

/** The run exceeded its run timeout (`terminate_after_ms`): it ends `timed_out`. */
export class RunTimeout extends Error {
  readonly executionId: number;
  readonly afterMs: number;

  constructor(executionId: number, afterMs: number) {
    super(`execution ${executionId} exceeded its run timeout (${afterMs} ms)`);
    this.name = "RunTimeout";
    this.executionId = executionId;
    this.afterMs = afterMs;
  }
}

/**
 * The worker is stopping and the run did not finish within the grace period: it is handed
 * back to the server (queued again at once, not counted against retries).
 */
export class HandedBack extends Error {
  readonly executionId: number;

  constructor(executionId: number) {
    super(`execution ${executionId}: the worker is stopping; the run is handed back`);
    this.name = "HandedBack";
    this.executionId = executionId;
  }
}
