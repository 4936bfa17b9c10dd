// One real `runsignal` process per scenario: its own temporary directory
// (working directory, so the SQLite database, workspaces and artifacts land
// there), a free loopback port, settings as `RUNSIGNAL__…` variables.
// `stop()` sends SIGTERM (the graceful stop a deployment does) and `start()`
// again reuses the port and the directory: a restart. Only processes started
// here are ever signalled; any still running when this process exits are
// killed (SIGKILL).
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ORCH = "/api/v1/orchestrator";
export const TENANT = "acme";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = join(here, "..", "..", "..");

/** Processes started here and not yet reaped. */
const live = new Set();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** A loopback port nobody listens on now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** A packs directory with the shipped packs and the tests' own (`slow`). */
function packsDir(dir) {
  const out = join(dir, "packs");
  mkdirSync(out, { recursive: true });
  for (const from of [join(REPO, "config", "packs"), join(here, "..", "packs")]) {
    for (const f of readdirSync(from).filter((f) => f.endsWith(".json"))) {
      copyFileSync(join(from, f), join(out, f));
    }
  }
  return out;
}

/** `Auth.Tokens` entry for `token` (only its SHA-256 is configured). */
export function tokenEntry(token, { tenants = [TENANT], scopes = ["read", "write"] } = {}) {
  const sha256 = createHash("sha256").update(token).digest("hex");
  return JSON.stringify({ name: `browser-${sha256.slice(0, 8)}`, sha256, tenants, scopes });
}

export class Server {
  /**
   * @param {string} bin the `runsignal` binary
   * @param {Record<string,string>} settings `Section__Key` → value
   */
  constructor(bin, settings = {}) {
    this.bin = bin;
    this.dir = mkdtempSync(join(tmpdir(), "runsignal-browser-"));
    this.settings = {
      Logging__Level: "warn",
      Server__Workers: "2",
      Executor__PacksDir: packsDir(this.dir),
      ...settings,
    };
    this.port = 0;
    this.child = null;
    this.exited = null;
    this.token = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get log() {
    return join(this.dir, "server.log");
  }

  /** Start (or start again, same port and data) and wait for `/readyz`. */
  async start() {
    if (!this.port) this.port = await freePort();
    const env = { ...process.env, RUNSIGNAL__Server__Bind: `127.0.0.1:${this.port}` };
    for (const [k, v] of Object.entries(this.settings)) env[`RUNSIGNAL__${k}`] = v;
    const log = openSync(this.log, "a");
    const child = spawn(this.bin, [], { cwd: this.dir, env, stdio: ["ignore", log, log] });
    live.add(child);
    this.child = child;
    this.exited = new Promise((resolve) =>
      child.on("exit", (code, signal) => {
        live.delete(child);
        resolve({ code, signal });
      }),
    );
    const deadline = Date.now() + 60_000;
    for (;;) {
      const gone = await Promise.race([this.exited, sleep(100).then(() => null)]);
      if (gone) throw new Error(`the server exited (${JSON.stringify(gone)}) before it was ready:\n${this.logTail()}`);
      try {
        const res = await fetch(`${this.url}/readyz`);
        if (res.ok) return this;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`the server was not ready within 60 s:\n${this.logTail()}`);
    }
  }

  /** SIGTERM and wait for the exit (SIGKILL after 20 s). */
  async stop() {
    if (!this.child || !live.has(this.child)) return;
    this.child.kill("SIGTERM");
    const done = await Promise.race([this.exited, sleep(20_000).then(() => null)]);
    if (!done) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }

  /** Stop and remove the directory (the log is printed first when asked). */
  async dispose({ keepLog = false } = {}) {
    await this.stop();
    if (keepLog) console.log(`--- server log (${this.log}), last lines:\n${this.logTail()}`);
    rmSync(this.dir, { recursive: true, force: true });
  }

  logTail(n = 40) {
    try {
      return readFileSync(this.log, "utf8").split("\n").slice(-n).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /** A JSON request as tenant `acme` (and the token, when set); the parsed body. */
  async api(method, path, body) {
    const headers = { "X-Tenant-Id": TENANT };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** `POST /jobs`; returns `{job_id, run_id, state}`. */
  submit(pack, inputs = {}) {
    return this.api("POST", "/jobs", { pack, inputs });
  }

  job(jobId) {
    return this.api("GET", `/jobs/${jobId}`);
  }

  /** Poll `GET /jobs/{id}` until `pred(job)` holds. */
  async waitJob(jobId, pred, what, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = await this.job(jobId);
      if (pred(job)) return job;
      if (Date.now() > deadline) throw new Error(`job ${jobId}: ${what} not reached in ${timeoutMs} ms: ${JSON.stringify(job)}`);
      await sleep(100);
    }
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A started server for `fn`, stopped and removed afterwards; its log is
 * printed when `fn` failed.
 */
export async function withServer(bin, settings, fn) {
  const server = new Server(bin, settings);
  let ok = false;
  try {
    await server.start();
    const out = await fn(server);
    ok = true;
    return out;
  } finally {
    await server.dispose({ keepLog: !ok });
  }
}
