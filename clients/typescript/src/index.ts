export { Client, isTerminal } from "./client.js";
export type {
  BulkTrigger,
  ClientOptions,
  DeleteJobOptions,
  ExecutionQuery,
  JobPatch,
  RequestOptions,
  RescheduleOptions,
  TriggerOptions,
} from "./client.js";
export { Worker } from "./worker.js";
export type { Context, Handler, Logger, WorkerOptions, WorkerReport } from "./worker.js";
export { Cancelled, HandedBack, JobwardError, LeaseLost, RunTimeout } from "./errors.js";
export type * from "./types.js";
