// Peer figures for runsignal-load: graphile-worker on PostgreSQL.
//
// (a) addJob from C concurrent connections (one pg pool of C clients, C
//     loops each awaiting its previous addJob) for S seconds → jobs/s, p50/p99.
// (b) the worker (`run`, concurrency W) draining the jobs of (a) with a
//     no-op task → jobs/s, from its start until the queue is empty (polled).
//
// Environment: DATABASE_URL (required; the schema `graphile_worker` is
// created in it), ADD_CONCURRENCY (32), ADD_SECONDS (8), WORKER_CONCURRENCY (16).

import { EventEmitter } from "node:events";
import { Logger, makeWorkerUtils, run } from "graphile-worker";
import pg from "pg";

const env = (name, dflt) => Number(process.env[name] ?? dflt);
const url = process.env.DATABASE_URL;
if (!url) {
  console.error("DATABASE_URL is required");
  process.exit(2);
}
const addConcurrency = env("ADD_CONCURRENCY", 32);
const addSeconds = env("ADD_SECONDS", 8);
const workerConcurrency = env("WORKER_CONCURRENCY", 16);

// Warnings and errors only: the default logger writes a line per job.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[${level}] ${message}`);
});

const quantile = (sorted, q) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0;
const us = (ns) => Number(ns / 1000n);

async function addJobs(pool) {
  const utils = await makeWorkerUtils({ pgPool: pool, logger });
  await utils.migrate();
  const latencies = [];
  let errors = 0;
  const firstErrors = [];
  const started = process.hrtime.bigint();
  const deadline = started + BigInt(addSeconds) * 1_000_000_000n;
  const loop = async (worker) => {
    let i = 0;
    while (process.hrtime.bigint() < deadline) {
      const t = process.hrtime.bigint();
      try {
        await utils.addJob("noop", { worker, i: i++ });
        latencies.push(us(process.hrtime.bigint() - t));
      } catch (e) {
        errors++;
        if (firstErrors.length < 5) firstErrors.push(String(e));
      }
    }
  };
  await Promise.all(Array.from({ length: addConcurrency }, (_, w) => loop(w)));
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  await utils.release();
  latencies.sort((a, b) => a - b);
  console.log(
    `addJob: concurrency=${addConcurrency} seconds=${addSeconds}: ` +
      `${latencies.length} jobs in ${secs.toFixed(2)}s = ${(latencies.length / secs).toFixed(1)} jobs/s; ` +
      `p50=${quantile(latencies, 0.5)}us p99=${quantile(latencies, 0.99)}us ` +
      `max=${latencies.at(-1) ?? 0}us errors=${errors}`,
  );
  for (const e of firstErrors) console.log(`  error: ${e}`);
  return latencies.length;
}

const remaining = async (pool) =>
  (await pool.query("select count(*)::int as n from graphile_worker.jobs")).rows[0].n;

// graphile-worker 0.17 emits `job:complete` right after *starting* the
// completion query (not awaited), so the drain is timed by polling the
// queue every 20 ms until it is empty, i.e. until the completions are
// committed. Gives up after DRAIN_TIMEOUT_SECONDS (60).
async function drain(pool, total) {
  const events = new EventEmitter();
  let completed = 0;
  let failed = 0;
  events.on("job:complete", ({ error }) => {
    if (error) failed++;
    else completed++;
  });
  const limit = BigInt(env("DRAIN_TIMEOUT_SECONDS", 60)) * 1_000_000_000n;
  const started = process.hrtime.bigint();
  const runner = await run({
    pgPool: pool,
    logger,
    events,
    concurrency: workerConcurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    taskList: { noop: async () => {} },
  });
  let left = total;
  while (left > 0 && process.hrtime.bigint() - started < limit) {
    await new Promise((r) => setTimeout(r, 20));
    left = await remaining(pool);
  }
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();
  const drained = total - left;
  console.log(
    `worker: concurrency=${workerConcurrency}: ${drained} of ${total} no-op jobs gone from the queue ` +
      `in ${secs.toFixed(2)}s = ${(drained / secs).toFixed(1)} jobs/s ` +
      `(job:complete events: ${completed} ok, ${failed} failed); left after stop: ${await remaining(pool)}`,
  );
}

const pool = new pg.Pool({ connectionString: url, max: Math.max(addConcurrency, workerConcurrency) + 4 });
pool.on("error", (e) => console.error(`[pool] ${e}`));
pool.on("connect", (client) => client.on("error", (e) => console.error(`[client] ${e}`)));
const settings = await pool.query(
  "select current_setting('server_version') v, current_setting('fsync') f, current_setting('synchronous_commit') s",
);
const { v, f, s } = settings.rows[0];
console.log(`graphile-worker peer: PostgreSQL ${v} (fsync=${f}, synchronous_commit=${s})`);
const total = await addJobs(pool);
await drain(pool, total);
await pool.end();
