// Dashboard under load (issue 11 point 6): does the runs view stay
// responsive with 1,000 live runs each updated 10 times a second?
//
// Starts a `runsignal` process (the binary given), seeds `--runs` runs of
// one remote `external` job each and leases them all, opens
// `#/runs?limit=<runs>` in Debian's Chromium (one WebSocket, one
// subscription per run), then for `--seconds` offers `--rate` progress
// reports per second per run (each a new message and percent, so the run's
// signal changes each time) over keep-alive HTTP connections. In the page it
// measures long tasks (PerformanceObserver `longtask`) and the intervals
// between animation frames, first for `--idle` seconds without load, then
// during the load. Prints the figures; exits 1 when the page never showed
// the runs. How to run it: load/README.md; decisions: docs/adr/0039.
//
// Usage: node run.mjs --bin <runsignal> [--runs 1000] [--rate 10]
//        [--seconds 20] [--idle 5] [--connections 32] [--page 0|1]
// `--page 0`: no browser, the publisher alone (what the server achieves
// without the page's subscriptions and Chromium's share of the CPU).
import http from "node:http";
import { loadavg } from "node:os";

import { launch, loggedIn, open } from "../../tests/browser/lib/page.mjs";
import { ORCH, TENANT, sleep, withServer } from "../../tests/browser/lib/server.mjs";

function options() {
  const o = { runs: 1000, rate: 10, seconds: 20, idle: 5, connections: 32, page: 1, bin: null };
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i += 2) {
    const key = args[i].replace(/^--/, "");
    if (!(key in o) || args[i + 1] === undefined) {
      console.error("usage: node run.mjs --bin <runsignal> [--runs N] [--rate N] [--seconds N] [--idle N] [--connections N] [--page 0|1]");
      process.exit(64);
    }
    o[key] = key === "bin" ? args[i + 1] : Number(args[i + 1]);
  }
  if (!o.bin) {
    console.error("--bin <path to the runsignal binary> is required");
    process.exit(64);
  }
  return o;
}

/** One keep-alive POST; resolves to the status code (0: transport error). */
function post(agent, port, path, body) {
  return new Promise((resolve) => {
    const data = JSON.stringify(body);
    const req = http.request(
      {
        agent,
        host: "127.0.0.1",
        port,
        path,
        method: "POST",
        headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data), "X-Tenant-Id": TENANT },
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      },
    );
    req.on("error", () => resolve(0));
    req.end(data);
  });
}

/** Submit `n` external jobs (a run each) and lease them all: `[{jobId, leaseId}]`. */
async function seed(server, n) {
  const submitted = [];
  for (let i = 0; i < n; i += 50) {
    const batch = Array.from({ length: Math.min(50, n - i) }, () => server.submit("external"));
    submitted.push(...(await Promise.all(batch)));
  }
  const leased = [];
  while (leased.length < n) {
    const { jobs } = await server.api("POST", `${ORCH}/workers/lease`, {
      workerId: "load",
      packs: ["external"],
      max: 100,
      leaseSeconds: 3600,
    });
    if (!jobs.length) throw new Error(`only ${leased.length} of ${n} jobs could be leased`);
    leased.push(...jobs.map((j) => ({ jobId: j.jobId, leaseId: j.leaseId })));
  }
  return leased;
}

/** Start collecting long tasks and frame intervals in the page (from now). */
function startMeasuring(page) {
  return page.evaluate(() => {
    const m = (window.__load = { longtasks: [], frames: [], events0: window.__rsStats?.events ?? 0, renders0: window.__rsStats?.renders ?? 0, running: true });
    m.observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) m.longtasks.push(e.duration);
    });
    m.observer.observe({ type: "longtask" });
    let last = performance.now();
    const frame = (t) => {
      m.frames.push(t - last);
      last = t;
      if (m.running) requestAnimationFrame(frame);
    };
    requestAnimationFrame((t) => {
      last = t;
      requestAnimationFrame(frame);
    });
  });
}

/** Stop and summarise what `startMeasuring` collected. */
function stopMeasuring(page) {
  return page.evaluate(() => {
    const m = window.__load;
    m.running = false;
    m.observer.disconnect();
    const sorted = [...m.frames].sort((a, b) => a - b);
    const q = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0);
    return {
      longtasks: m.longtasks.length,
      longtaskTotal: m.longtasks.reduce((a, b) => a + b, 0),
      longtaskMax: Math.max(0, ...m.longtasks),
      frames: sorted.length,
      p50: q(0.5),
      p95: q(0.95),
      p99: q(0.99),
      max: sorted[sorted.length - 1] ?? 0,
      over50: sorted.filter((f) => f > 50).length,
      events: (window.__rsStats?.events ?? 0) - m.events0,
      renders: (window.__rsStats?.renders ?? 0) - m.renders0,
    };
  });
}

/**
 * Offer `rate` reports per second per job for `seconds`, paced in 10 ms
 * slots, round robin over the jobs. At most `cap` requests wait for an
 * answer: a slot that finds the cap reached is not sent (counted `skipped`),
 * so a slow server lowers the achieved rate instead of piling requests up.
 */
async function publish(port, jobs, { rate, seconds, connections }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const perSlot = (jobs.length * rate) / 100;
  const cap = connections * 16;
  const counts = { offered: 0, sent: 0, ok: 0, failed: 0, skipped: 0, firstError: null };
  let inFlight = 0;
  let next = 0;
  let seq = 0;
  const started = performance.now();
  const pending = new Set();
  for (let slot = 0; ; slot++) {
    const due = started + slot * 10;
    const now = performance.now();
    if (now - started >= seconds * 1000) break;
    if (due > now) await sleep(due - now);
    const want = Math.floor((slot + 1) * perSlot) - Math.floor(slot * perSlot);
    for (let k = 0; k < want; k++) {
      counts.offered += 1;
      if (inFlight >= cap) {
        counts.skipped += 1;
        continue;
      }
      const job = jobs[next];
      next = (next + 1) % jobs.length;
      seq += 1;
      inFlight += 1;
      counts.sent += 1;
      const p = post(agent, port, `${ORCH}/jobs/${job.jobId}/progress`, {
        leaseId: job.leaseId,
        percent: seq % 101,
        message: `update ${seq}`,
      }).then((status) => {
        inFlight -= 1;
        pending.delete(p);
        if (status >= 200 && status < 300) counts.ok += 1;
        else {
          counts.failed += 1;
          counts.firstError ??= status;
        }
      });
      pending.add(p);
    }
  }
  const offeredFor = (performance.now() - started) / 1000;
  await Promise.all(pending);
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  return { ...counts, offeredFor, elapsed };
}

const f1 = (x) => x.toFixed(1);

function printPublisher(sent) {
  console.log(
    `publisher: offered ${sent.offered} reports in ${f1(sent.offeredFor)} s (${f1(sent.offered / sent.offeredFor)}/s); ` +
      `sent ${sent.sent}, skipped ${sent.skipped} (client cap reached); ` +
      `answered 2xx ${sent.ok} in ${f1(sent.elapsed)} s = ${f1(sent.ok / sent.elapsed)}/s achieved; errors ${sent.failed}` +
      (sent.firstError === null ? "" : ` (first status ${sent.firstError})`),
  );
}

function printPage(label, s, seconds) {
  console.log(
    `${label.padEnd(6)} long tasks: ${s.longtasks} (total ${f1(s.longtaskTotal)} ms, max ${f1(s.longtaskMax)} ms); ` +
      `frames: ${s.frames} (${f1(s.frames / seconds)}/s), interval p50 ${f1(s.p50)} p95 ${f1(s.p95)} p99 ${f1(s.p99)} max ${f1(s.max)} ms, ` +
      `${s.over50} over 50 ms; events applied: ${s.events} (${f1(s.events / seconds)}/s), renders: ${s.renders}`,
  );
}

const o = options();
console.log(
  `dashboard load: runs=${o.runs} rate=${o.rate}/s per run (${o.runs * o.rate}/s offered) seconds=${o.seconds} idle=${o.idle} connections=${o.connections}`,
);
console.log(`load average before: ${loadavg().map(f1).join(" ")}`);
const settings = {
  Streams__MaxSubscriptionsPerSocket: String(Math.max(1000, o.runs)),
  Limits__MaxStreamsPerCredential: String(10 * o.runs),
  Limits__MaxStreamsPerTenant: String(10 * o.runs),
};
await withServer(o.bin, settings, async (server) => {
  const t0 = performance.now();
  const jobs = await seed(server, o.runs);
  console.log(`seeded and leased ${jobs.length} jobs in ${f1((performance.now() - t0) / 1000)} s`);

  if (!o.page) {
    const sent = await publish(server.port, jobs, o);
    console.log(`load average after: ${loadavg().map(f1).join(" ")}`);
    printPublisher(sent);
    return;
  }
  const browser = await launch();
  try {
    const page = await open(browser, server, { hash: `#/runs?limit=${o.runs}` });
    await loggedIn(page);
    const t1 = performance.now();
    await page.waitForFunction((n) => document.querySelectorAll('[data-testid="run-row"]').length >= n, o.runs, { timeout: 120_000 });
    await page.waitForFunction((n) => Number(document.querySelector('[data-testid="stream-count"]')?.getAttribute("data-count")) >= n, o.runs, {
      timeout: 120_000,
    });
    console.log(`page: ${o.runs} rows and ${o.runs} subscriptions after ${f1((performance.now() - t1) / 1000)} s (transport ${await page.evaluate(() => window.__rsStats?.transport)})`);

    await startMeasuring(page);
    await sleep(o.idle * 1000);
    const idle = await stopMeasuring(page);

    await startMeasuring(page);
    const sent = await publish(server.port, jobs, o);
    const loaded = await stopMeasuring(page);
    console.log(`load average after: ${loadavg().map(f1).join(" ")}`);
    printPublisher(sent);
    printPage("idle", idle, o.idle);
    printPage("load", loaded, sent.elapsed);
  } finally {
    await browser.close();
  }
});
