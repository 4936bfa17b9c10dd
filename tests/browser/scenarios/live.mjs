// (a) Auth.Mode=none: the prompt asks for a tenant; the `demo` pack
// submitted from the form is followed live, its signal going queued →
// started → phase → succeeded and every step bar filling.
//
// The built-in executor has one slot, held by a long `slow` job until the
// page shows the new run `queued`: otherwise the job may be running before
// the page subscribes, and `queued` would never be live on the page.
import assert from "node:assert/strict";

import {
  ORDER,
  assertInOrder,
  assertNoProblems,
  byTestId,
  logLines,
  loggedIn,
  open,
  record,
  seen,
  shotBoth,
  steps,
  submitFromForm,
  waitAttr,
  wsKinds,
} from "../lib/page.mjs";
import { withServer } from "../lib/server.mjs";

export default {
  name: "live",
  title: "submit `demo` from the form; its signal and steps go by live (WebSocket)",
  run: ({ bin, browser }) =>
    withServer(bin, { Executor__MaxConcurrentJobs: "1" }, async (server) => {
      const blocker = await server.submit("slow", { lines: "2400" });
      await server.waitJob(blocker.job_id, (j) => j.state === "working", "working");

      const page = await open(browser, server);
      const kindsReceived = wsKinds(page);
      try {
        const dialog = byTestId(page, "login-dialog");
        await dialog.waitFor({ state: "visible" });
        assert.equal(await byTestId(page, "login-token").count(), 0, "no token field with Auth.Mode=none");
        await loggedIn(page);
        // The runs view lists the busy run, live.
        const busyRow = page.locator(`[data-testid="run-row"][data-run-id="${blocker.run_id}"]`);
        await waitAttr(busyRow, "data-kind", "phase");

        await record(page, "kind", '[data-testid="run-signal"]', "data-kind");
        const runId = await submitFromForm(page, "demo", { name: "Ada" });
        assert.equal(await byTestId(page, "run-view").getAttribute("data-run-id"), runId);
        const signal = byTestId(page, "run-signal");
        await record(page, "step0", '[data-testid="step"][data-step-index="0"]', "data-status");
        await waitAttr(signal, "data-kind", "queued");
        // At least the open run's stream and its job's (pack-run) stream.
        const streams = Number(await byTestId(page, "stream-count").getAttribute("data-count"));
        assert.ok(streams >= 2, `open streams are counted: ${streams}`);

        // Free the slot: the demo job runs.
        await server.api("POST", `/jobs/${blocker.job_id}/cancel`);
        await waitAttr(signal, "data-kind", "succeeded");
        const job = byTestId(page, "job");
        await waitAttr(job, "data-state", "done");

        const domKinds = await seen(page, "kind");
        assertInOrder(domKinds, ORDER, ORDER, "run-signal data-kind on the page");
        assertInOrder(kindsReceived(runId), ORDER, ORDER, "first_signal kinds the page received over its WebSocket");
        console.log(`  run-signal data-kind: ${domKinds.join(" → ")}`);
        console.log(`  received first_signal kinds: ${kindsReceived(runId).join(" → ")}`);

        // Every step bar reached `succeeded` (full), after being seen running.
        const all = await steps(page);
        assert.equal(all.length, 4, `the demo pack's four steps: ${JSON.stringify(all)}`);
        for (const s of all) {
          assert.equal(s.status, "succeeded", `step ${s.index}: ${JSON.stringify(all)}`);
          assert.equal(s.value, "100", `step ${s.index}'s progress bar is full: ${JSON.stringify(all)}`);
        }
        const step0 = await seen(page, "step0");
        assert.deepEqual(step0.slice(-2), ["running", "succeeded"], `step 0 went running → succeeded live: ${step0}`);

        // The log tail and the artifact the job wrote.
        const lines = await logLines(page);
        const done = await server.job(await job.getAttribute("data-job-id"));
        assert.equal(lines.length, done.progress.log_lines, `every log line is shown: ${JSON.stringify(lines)}`);
        const hrefs = await byTestId(page, "artifact-link").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
        assert.ok(hrefs.some((h) => h.endsWith("/artifacts/report")), `a link to the report artifact: ${hrefs}`);
        const transport = await page.evaluate(() => window.__rsStats?.transport);
        assert.equal(transport, "websocket");
        await waitAttr(byTestId(page, "conn-state"), "data-state", "websocket");
        await shotBoth(page, "run-succeeded");

        // Back in the runs view: both rows show their final signal.
        await page.goto(`${server.url}/#/runs`);
        await waitAttr(page.locator(`[data-testid="run-row"][data-run-id="${runId}"]`), "data-kind", "succeeded");
        await waitAttr(busyRow, "data-kind", "canceled");
        await shotBoth(page, "runs");
        assertNoProblems(page);
      } finally {
        await page.context().close();
      }
    }),
};
