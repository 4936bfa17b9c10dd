// (c) The server is restarted (SIGTERM, then started again on the same port
// and data) while a `slow` job runs its second step. The page shows it lost
// the connection, reconnects by itself and resumes by seq: it ends with
// every step succeeded and every log line of the job, numbered without a gap.
//
// The built-in job dies with the old process; the new one requeues it
// (attempt 2), which runs all four steps again. Log lines are numbered per
// job across attempts, so "no gap" is checked over the job's whole log
// (`GET /jobs/{id}` says how many lines it has) and every step has lines.
import assert from "node:assert/strict";

import {
  assertNoProblems,
  byTestId,
  logLines,
  loggedIn,
  open,
  record,
  seen,
  shotBoth,
  steps,
  waitAttr,
} from "../lib/page.mjs";
import { sleep, withServer } from "../lib/server.mjs";

/** The page keeps at most this many lines per job (contract). */
const TAIL = 500;

export default {
  name: "restart",
  title: "restart the server mid-run; the page resumes without a lost step or line",
  run: ({ bin, browser }) =>
    withServer(bin, {}, async (server) => {
      const { job_id: jobId, run_id: runId } = await server.submit("slow", { lines: "12" });
      const page = await open(browser, server, { hash: `#/runs/${runId}` });
      try {
        await loggedIn(page, {}, "run-view");
        const conn = byTestId(page, "conn-state");
        await waitAttr(conn, "data-state", "websocket");
        await record(page, "conn", '[data-testid="conn-state"]', "data-state");
        await waitAttr(page.locator('[data-testid="step"][data-step-index="1"]'), "data-status", "running");
        await byTestId(page, "log-tail").locator('[data-step-index="1"]').first().waitFor();

        await server.stop();
        await waitAttr(conn, "data-state", ["offline", "connecting"]);
        await shotBoth(page, "run-offline");
        await sleep(1000);
        await server.start();

        await waitAttr(conn, "data-state", "websocket");
        const signal = byTestId(page, "run-signal");
        await waitAttr(signal, "data-kind", "succeeded", 120_000);
        await waitAttr(byTestId(page, "job"), "data-state", "done");
        const connSeen = await seen(page, "conn");
        console.log(`  conn-state: ${connSeen.join(" → ")}`);
        assert.equal(connSeen[0], "websocket");
        assert.equal(connSeen[connSeen.length - 1], "websocket");

        const all = await steps(page);
        assert.equal(all.length, 4, JSON.stringify(all));
        for (const s of all) assert.equal(s.status, "succeeded", `every step reported: ${JSON.stringify(all)}`);

        const job = await server.job(jobId);
        assert.equal(job.state, "done");
        assert.ok(job.attempt >= 2, `the job ran again after the restart: attempt ${job.attempt}`);
        const total = job.progress.log_lines;
        const lines = await logLines(page);
        const numbers = lines.map((l) => l.lineNo);
        const first = Math.max(1, total - TAIL + 1);
        const want = Array.from({ length: total - first + 1 }, (_, i) => first + i);
        assert.deepEqual(numbers, want, `log data-line-no: every line from ${first} to ${total}, in order, once`);
        for (const s of [0, 1, 2, 3]) {
          assert.ok(lines.some((l) => l.step === s), `step ${s} has log lines`);
        }
        console.log(`  ${lines.length} log lines, attempt ${job.attempt}`);
        await shotBoth(page, "run-after-restart");
        assertNoProblems(page);
      } finally {
        await page.context().close();
      }
    }),
};
