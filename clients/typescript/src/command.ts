// Runs a claimed command the way `jobward worker` does: `sh -c COMMAND` in its own process
// group, the JOBWARD_* environment, a bounded log tail, SIGTERM then SIGKILL of the group.
import { spawn, type ChildProcess } from "node:child_process";
import { constants } from "node:os";
import { readdirSync, readFileSync } from "node:fs";

/** Keeps the last `limit` bytes written to it. */
export class TailBuffer {
  #chunks: Buffer[] = [];
  #size = 0;
  #dropped = false;

  constructor(readonly limit: number) {}

  write(data: Buffer | string): void {
    const b = typeof data === "string" ? Buffer.from(data) : data;
    if (b.length === 0) return;
    this.#chunks.push(b);
    this.#size += b.length;
    while (this.#size > this.limit && this.#chunks.length > 0) {
      const first = this.#chunks[0]!;
      const excess = this.#size - this.limit;
      if (first.length <= excess) {
        this.#chunks.shift();
        this.#size -= first.length;
      } else {
        this.#chunks[0] = first.subarray(excess);
        this.#size -= excess;
      }
      this.#dropped = true;
    }
  }

  get size(): number {
    return this.#size;
  }

  /** The tail as text (a character cut in half at the start is dropped), or null when empty. */
  text(): string | null {
    if (this.#size === 0) return null;
    let b = Buffer.concat(this.#chunks);
    if (this.#dropped) {
      // Skip UTF-8 continuation bytes of a character whose start was dropped.
      let i = 0;
      while (i < b.length && i < 4 && (b[i]! & 0xc0) === 0x80) i++;
      b = b.subarray(i);
    }
    return b.toString("utf8");
  }
}

/** Cuts `s` to at most `maxBytes` bytes of UTF-8, at a character boundary. */
export function truncateUtf8(s: string, maxBytes: number): string {
  const b = Buffer.from(s);
  if (b.length <= maxBytes) return s;
  let end = maxBytes;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end).toString("utf8");
}

export interface CommandExit {
  /** The exit code, when it exited. */
  code: number | null;
  /** The number of the signal that ended it, when one did. */
  signal: number | null;
  signalName: string | null;
}

export interface RunningCommand {
  readonly pid: number | undefined;
  /** Resolves when it ended and its output is read (or could not start: `spawnError`). */
  readonly done: Promise<CommandExit & { spawnError?: Error }>;
  /** Sends a signal to its whole process group (ignored once it is gone). */
  signalGroup(signal: NodeJS.Signals): void;
}

/** Starts `sh -c command` as the leader of a new process group. */
export function startCommand(command: string, env: NodeJS.ProcessEnv, log: TailBuffer): RunningCommand {
  let child: ChildProcess;
  const done = new Promise<CommandExit & { spawnError?: Error }>((resolve) => {
    child = spawn("sh", ["-c", command], {
      detached: true,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.on("data", (d: Buffer) => log.write(d));
    child.stderr!.on("data", (d: Buffer) => log.write(d));
    let exit: CommandExit | null = null;
    child.once("error", (err) => {
      if (child.pid === undefined) resolve({ code: null, signal: null, signalName: null, spawnError: err });
    });
    child.once("exit", (code, signalName) => {
      exit = {
        code,
        signal: signalName ? (constants.signals[signalName] ?? null) : null,
        signalName,
      };
      // Whatever it left in its group dies with it; then its pipes close.
      killGroup(child.pid, "SIGKILL");
      const t = setTimeout(() => resolve(exit!), 2000);
      child.once("close", () => {
        clearTimeout(t);
        resolve(exit!);
      });
    });
  });
  return {
    get pid() {
      return child.pid;
    },
    done,
    signalGroup(signal) {
      killGroup(child.pid, signal);
    },
  };
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is gone.
  }
}

/**
 * Kills processes a previous run of this worker id left behind (Linux: found by their
 * JOBWARD_NODE_ID / JOBWARD_EXECUTION_ID environment). Returns their pids.
 */
export function sweepOwner(workerId: string): number[] {
  if (process.platform !== "linux") return [];
  const killed: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return [];
  }
  const mark = `JOBWARD_NODE_ID=${workerId}`;
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    let environ: string;
    try {
      environ = readFileSync(`/proc/${name}/environ`, "latin1");
    } catch {
      continue;
    }
    const vars = environ.split("\0");
    if (vars.includes(mark) && vars.some((v) => v.startsWith("JOBWARD_EXECUTION_ID="))) {
      try {
        process.kill(pid, "SIGKILL");
        killed.push(pid);
      } catch {}
    }
  }
  return killed;
}
