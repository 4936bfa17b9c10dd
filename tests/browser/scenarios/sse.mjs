// (e) `?transport=sse`: the page opens no WebSocket and still follows a
// `demo` run live (EventSource on the run view, first-signal polling in the
// runs list): its signal shows queued → started → phase → succeeded.
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
} from "../lib/page.mjs";
import { withServer } from "../lib/server.mjs";

export default {
  name: "sse",
  title: "?transport=sse still shows the run live",
  run: ({ bin, browser }) =>
    withServer(bin, {}, async (server) => {
      const page = await open(browser, server, { query: "?transport=sse" });
      const sockets = [];
      page.on("websocket", (ws) => sockets.push(ws.url()));
      try {
        await loggedIn(page);
        await record(page, "streams", '[data-testid="stream-count"]', "data-count");
        await record(page, "kind", '[data-testid="run-signal"]', "data-kind");
        const runId = await submitFromForm(page, "demo");
        await waitAttr(byTestId(page, "conn-state"), "data-state", "sse");
        const signal = byTestId(page, "run-signal");
        await waitAttr(signal, "data-kind", "succeeded");
        await waitAttr(byTestId(page, "job"), "data-state", "done");

        const kinds = await seen(page, "kind");
        console.log(`  run-signal data-kind: ${kinds.join(" → ")}`);
        assertInOrder(kinds, ORDER, ORDER, "run-signal data-kind on the page");
        for (const s of await steps(page)) assert.equal(s.status, "succeeded", `step ${s.index}`);
        assert.ok((await logLines(page)).length > 0, "the log tail follows over SSE");
        assert.equal(await page.evaluate(() => window.__rsStats?.transport), "sse");
        const counts = (await seen(page, "streams")).map(Number);
        assert.ok(Math.max(...counts) >= 1, `open EventSources are counted: ${counts}`);
        await shotBoth(page, "run-sse");

        // The runs list (polling) shows the final signal too.
        await page.goto(`${server.url}/?transport=sse#/runs`);
        await waitAttr(page.locator(`[data-testid="run-row"][data-run-id="${runId}"]`), "data-kind", "succeeded");
        assert.deepEqual(sockets, [], "no WebSocket with ?transport=sse");
        assertNoProblems(page);
      } finally {
        await page.context().close();
      }
    }),
};
