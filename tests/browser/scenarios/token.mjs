// (d) Auth.Mode=token: the page prompts for a token; a wrong one brings the
// prompt back (and is not kept), the right one shows the tenant's runs live;
// when the token stops being accepted (the server restarted with another
// token list), the next 401 clears it and brings the prompt back.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import { assertNoProblems, byTestId, login, loggedIn, open, shotBoth, waitAttr } from "../lib/page.mjs";
import { ORCH, tokenEntry, withServer } from "../lib/server.mjs";

const newToken = () => `rsg_${randomBytes(32).toString("base64url")}`;
const stored = (page) => page.evaluate(() => sessionStorage.getItem("runsignal.token"));

export default {
  name: "token",
  title: "a token-protected server prompts, refuses a wrong token, then works",
  run: ({ bin, browser }) => {
    // The page's token (read, write) and the test's own (it also plays the worker).
    const token = newToken();
    const own = newToken();
    const settings = {
      Auth__Mode: "token",
      Auth__Tokens__0: tokenEntry(token),
      Auth__Tokens__1: tokenEntry(own, { scopes: ["read", "write", "worker"] }),
    };
    return withServer(bin, settings, async (server) => {
      server.token = own;
      const run = await server.submit("external");

      const page = await open(browser, server);
      try {
        const dialog = byTestId(page, "login-dialog");
        await dialog.waitFor({ state: "visible" });
        await byTestId(page, "login-token").waitFor({ state: "visible" });
        assert.equal(await byTestId(page, "login-token").getAttribute("type"), "password");
        await shotBoth(page, "login-token");

        // A wrong token: refused (401), not kept, the prompt is back.
        const refused = page.waitForResponse((r) => r.url().includes(ORCH) && r.status() === 401);
        await login(page, { token: newToken(), tenant: undefined });
        await refused;
        await dialog.waitFor({ state: "visible" });
        await byTestId(page, "login-token").waitFor({ state: "visible" });
        await page.waitForFunction(() => sessionStorage.getItem("runsignal.token") === null);

        // The right one (bound to one tenant: no tenant needed).
        await loggedIn(page, { token, tenant: undefined });
        assert.equal(await stored(page), token, "the token is kept in sessionStorage");
        const row = page.locator(`[data-testid="run-row"][data-run-id="${run.run_id}"]`);
        // (`blocked` once nobody leased it for Jobs.BlockedAfterSeconds.)
        await waitAttr(row, "data-kind", ["queued", "blocked"]);
        await waitAttr(byTestId(page, "conn-state"), "data-state", "websocket");
        // Live with the token: a worker takes the job, the row follows.
        const leased = await server.api("POST", `${ORCH}/workers/lease`, {
          workerId: "browser-test",
          packs: ["external"],
          max: 1,
          leaseSeconds: 60,
        });
        assert.equal(leased.jobs.length, 1);
        await waitAttr(row, "data-kind", "started");
        await shotBoth(page, "runs-token");

        // Logging out forgets the token and asks again.
        await byTestId(page, "logout").click();
        await dialog.waitFor({ state: "visible" });
        assert.equal(await stored(page), null, "logout clears sessionStorage");
        await loggedIn(page, { token, tenant: undefined });
        await waitAttr(row, "data-kind", "started");

        // The token is revoked: the server comes back with another one only.
        await server.stop();
        server.settings.Auth__Tokens__0 = tokenEntry(newToken());
        await server.start();
        await dialog.waitFor({ state: "visible", timeout: 90_000 });
        await byTestId(page, "login-token").waitFor({ state: "visible" });
        await page.waitForFunction(() => sessionStorage.getItem("runsignal.token") === null);
        assertNoProblems(page);
      } finally {
        await page.context().close();
      }
    });
  },
};
