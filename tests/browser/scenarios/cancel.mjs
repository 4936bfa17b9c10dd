// (b) A running job canceled with its `action-cancel` button: the job, the
// run's signal and the server all say `canceled`; the steps it never
// reached are `skipped` (the one it was running `failed`), and `retry` is offered instead of `cancel`.
import assert from "node:assert/strict";

import { assertNoProblems, byTestId, loggedIn, open, shotBoth, steps, submitFromForm, waitAttr } from "../lib/page.mjs";
import { withServer } from "../lib/server.mjs";

export default {
  name: "cancel",
  title: "cancel a running job from its button",
  run: ({ bin, browser }) =>
    withServer(bin, {}, async (server) => {
      const page = await open(browser, server);
      try {
        await loggedIn(page);
        // About a minute of work: the click surely lands while it runs.
        await submitFromForm(page, "slow", { lines: "240" });
        const job = byTestId(page, "job");
        await waitAttr(job, "data-state", "working");
        await waitAttr(page.locator('[data-testid="step"][data-step-index="0"]'), "data-status", "running");
        await byTestId(page, "log-tail").locator("[data-line-no]").first().waitFor();
        await shotBoth(page, "run-working");

        await byTestId(page, "action-cancel").click();
        await waitAttr(job, "data-state", "canceled");
        await waitAttr(byTestId(page, "run-signal"), "data-kind", "canceled");
        const jobId = await job.getAttribute("data-job-id");
        assert.equal((await server.job(jobId)).state, "canceled", "the server canceled the job");

        await byTestId(page, "action-retry").waitFor({ state: "visible" });
        assert.equal(await byTestId(page, "action-cancel").count(), 0, "no cancel button on a canceled job");
        // The step that was running ended `failed`; the later ones are `skipped`.
        await waitAttr(page.locator('[data-testid="step"][data-step-index="0"]'), "data-status", "failed");
        for (const i of [1, 2, 3]) {
          await waitAttr(page.locator(`[data-testid="step"][data-step-index="${i}"]`), "data-status", "skipped");
        }
        assert.equal((await steps(page)).length, 4, "the slow pack's four steps");
        await shotBoth(page, "run-canceled");
        assertNoProblems(page);
      } finally {
        await page.context().close();
      }
    }),
};
