// (f) At 360 px wide the runs view is usable: the body never scrolls
// sideways, each row's signal is on screen and its link opens the run; the
// filters narrow the list. Accessibility smoke on the prompt, the runs view
// and the run view: every form control has an accessible name (its label),
// every button a name, and the keyboard reaches the submit button.
import assert from "node:assert/strict";

import { PHONE, assertNoProblems, byTestId, loggedIn, open, shot, waitAttr } from "../lib/page.mjs";
import { ORCH, withServer } from "../lib/server.mjs";

/** Controls without an accessible name, and the page's horizontal overflow. */
function audit(page) {
  return page.evaluate(() => {
    const visible = (el) => el.offsetParent !== null || el.getClientRects().length > 0;
    const named = (el) =>
      (el.labels && [...el.labels].some((l) => l.textContent.trim())) ||
      el.getAttribute("aria-label")?.trim() ||
      (el.getAttribute("aria-labelledby") ?? "")
        .split(/\s+/)
        .some((id) => document.getElementById(id)?.textContent.trim());
    const unnamed = [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
      .filter(visible)
      .filter((el) => !named(el))
      .map((el) => el.outerHTML.slice(0, 120));
    const buttons = [...document.querySelectorAll("button")]
      .filter(visible)
      .filter((b) => !(b.textContent.trim() || b.getAttribute("aria-label")?.trim() || b.title?.trim()))
      .map((b) => b.outerHTML.slice(0, 120));
    const root = document.documentElement;
    return {
      unnamed,
      buttons,
      overflow: Math.max(root.scrollWidth, document.body.scrollWidth) - root.clientWidth,
    };
  });
}

/** Wait until the only run row shown is `runId`'s. */
function onlyRow(page, runId) {
  return page.waitForFunction((id) => {
    const shown = [...document.querySelectorAll('[data-testid="run-row"]')].filter((r) => r.getClientRects().length);
    return shown.length === 1 && shown[0].getAttribute("data-run-id") === id;
  }, runId);
}

async function assertAccessible(page, where) {
  const a = await audit(page);
  assert.deepEqual(a.unnamed, [], `${where}: every form control has a label`);
  assert.deepEqual(a.buttons, [], `${where}: every button has a name`);
  // Playwright's accessibility tree agrees: no nameless textbox or combobox.
  const tree = await page.locator("body").ariaSnapshot();
  const nameless = tree.split("\n").filter((l) => /^\s*- (textbox|combobox|checkbox|spinbutton|searchbox)\s*(:|$|\[)/.test(l));
  assert.deepEqual(nameless, [], `${where}: accessibility tree`);
  return a;
}

export default {
  name: "narrow",
  title: "360 px wide: no sideways scroll, usable runs table; labels on every control",
  run: ({ bin, browser }) =>
    withServer(bin, {}, async (server) => {
      // Runs in several states, one of them named.
      const done = await server.submit("demo");
      const canceled = await server.submit("external");
      await server.api("POST", `/jobs/${canceled.job_id}/cancel`);
      const named = await server.api("POST", `${ORCH}/runs`, { name: "nightly-build" });
      await server.api("POST", "/jobs", { pack: "external", run_id: named.runId });
      for (let i = 0; i < 8; i++) await server.submit("external");
      await server.waitJob(done.job_id, (j) => j.state === "done", "done");

      const page = await open(browser, server, { viewport: PHONE });
      try {
        await byTestId(page, "login-dialog").waitFor({ state: "visible" });
        await assertAccessible(page, "prompt");
        await shot(page, "login-360");
        await loggedIn(page);
        const rows = page.locator('[data-testid="run-row"]');
        await waitAttr(rows.and(page.locator(`[data-run-id="${done.run_id}"]`)), "data-kind", "succeeded");
        assert.ok((await rows.count()) >= 11, `all 11 runs listed: ${await rows.count()}`);
        const a = await assertAccessible(page, "runs view");
        assert.ok(a.overflow <= 0, `the body does not scroll sideways at 360 px (${a.overflow} px too wide)`);
        // Each row's signal is on screen, not cut off to the right.
        const first = rows.first();
        const box = await first.locator('[data-field="kind"]').boundingBox();
        assert.ok(box && box.x >= 0 && box.x + box.width <= PHONE.width, `kind cell on screen: ${JSON.stringify(box)}`);
        await shot(page, "runs-360");

        // Keyboard: Tab reaches the submit button.
        let reached = false;
        for (let i = 0; i < 60 && !reached; i++) {
          await page.keyboard.press("Tab");
          reached = await page.evaluate(() => document.activeElement?.getAttribute("data-testid") === "submit-button");
        }
        assert.ok(reached, "Tab reaches the submit button");

        // Filters: by status, then by name.
        await byTestId(page, "filter-status").selectOption("canceled");
        await onlyRow(page, canceled.run_id);
        await byTestId(page, "filter-status").selectOption("");
        await byTestId(page, "filter-name").fill("nightly");
        await onlyRow(page, named.runId);
        await byTestId(page, "filter-name").fill("");

        // A row's link opens its run view, usable at 360 px too.
        await rows.and(page.locator(`[data-run-id="${done.run_id}"]`)).locator("a").first().click();
        await waitAttr(byTestId(page, "run-view"), "data-run-id", done.run_id);
        await waitAttr(byTestId(page, "run-signal"), "data-kind", "succeeded");
        const r = await assertAccessible(page, "run view");
        assert.ok(r.overflow <= 0, `the run view does not scroll sideways at 360 px (${r.overflow} px too wide)`);
        await shot(page, "run-360");
        assertNoProblems(page);
      } finally {
        await page.context().close();
      }
    }),
};
