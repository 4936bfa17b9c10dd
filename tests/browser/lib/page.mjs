// Debian's Chromium driven by playwright-core (no browser is downloaded),
// and what the scenarios do on the dashboard. Elements are found only by the
// contract's data-testid attributes (docs/adr/0039-browser-tests.md).
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

import { REPO, TENANT, sleep } from "./server.mjs";

export const CHROMIUM = process.env.RUNSIGNAL_TEST_CHROMIUM || "/usr/bin/chromium";
export const SHOTS = join(REPO, "ci-artifacts", "screenshots");
export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 360, height: 740 };
/** Longest wait for something the page should show (a loaded machine). */
export const WAIT = 60_000;

/** Signal kinds in the order a successful run goes through them. */
export const ORDER = ["queued", "started", "phase", "succeeded"];
/** Wire number → name (SPEC §4.1). */
export const KINDS = ["queued", "started", "phase", "blocked", "failed", "succeeded", "canceled", "unavailable"];

export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true });
}

/**
 * A new page (own context: own sessionStorage) on `server`'s dashboard;
 * uncaught page errors and CSP refusals are collected in `page.problems`.
 */
export async function open(browser, server, { viewport = DESKTOP, query = "", hash = "" } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (/Content Security Policy|Refused to (load|execute|apply|connect)/i.test(m.text())) {
      page.problems.push(`CSP: ${m.text()}`);
    }
  });
  await page.goto(`${server.url}/${query}${hash}`);
  return page;
}

/** The page kept working: no uncaught error, nothing refused by the CSP. */
export function assertNoProblems(page) {
  if (page.problems.length) throw new Error(`the page reported problems:\n${page.problems.join("\n")}`);
}

export const byTestId = (page, id) => page.locator(`[data-testid="${id}"]`);

/** Answer the prompt: the tenant (Auth.Mode=none) and/or a token. */
export async function login(page, { tenant = TENANT, token } = {}) {
  await byTestId(page, "login-dialog").waitFor({ state: "visible" });
  if (token !== undefined) await byTestId(page, "login-token").fill(token);
  if (tenant !== undefined) await byTestId(page, "login-tenant").fill(tenant);
  await byTestId(page, "login-submit").click();
}

/** Logged in (the prompt answered and gone), `view` showing. */
export async function loggedIn(page, opts, view = "runs-view") {
  await login(page, opts);
  await byTestId(page, "login-dialog").waitFor({ state: "hidden" });
  await byTestId(page, view).waitFor({ state: "visible" });
}

/** Wait until `locator`'s attribute `name` is `value` (one of, for a list). */
export async function waitAttr(locator, name, value, timeout = WAIT) {
  const want = Array.isArray(value) ? value : [value];
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await locator.getAttribute(name, { timeout: Math.max(1, deadline - Date.now()) }).catch(() => undefined);
    if (want.includes(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`${locator} [${name}] never became ${want.join("|")} in ${timeout} ms (last: ${last})`);
    }
    await sleep(50);
  }
}

/**
 * Record, in the page, every value the attribute `attr` of the first element
 * matching `selector` takes (a MutationObserver on the whole document: the
 * element may be replaced). `seen(page, key)` reads the values back,
 * consecutive repeats and empty values dropped.
 */
export async function record(page, key, selector, attr) {
  await page.evaluate(
    ([key, selector, attr]) => {
      window.__e2e ??= {};
      const seen = (window.__e2e[key] = []);
      const note = () => {
        const v = document.querySelector(selector)?.getAttribute(attr);
        if (v && seen[seen.length - 1] !== v) seen.push(v);
      };
      note();
      new MutationObserver(note).observe(document.documentElement, {
        subtree: true,
        childList: true,
        attributes: true,
        attributeFilter: [attr],
      });
    },
    [key, selector, attr],
  );
}

export const seen = (page, key) => page.evaluate((key) => window.__e2e?.[key] ?? [], key);

/**
 * The `first_signal` kinds the page received over its WebSocket for `runId`,
 * in arrival order (consecutive repeats dropped). Call before the page
 * connects.
 */
export function wsKinds(page) {
  const kinds = new Map();
  page.on("websocket", (ws) => {
    ws.on("framereceived", ({ payload }) => {
      let f;
      try {
        f = JSON.parse(typeof payload === "string" ? payload : payload.toString());
      } catch {
        return;
      }
      const list = f.op === "event" && f.event === "first_signal" ? [f] : [];
      for (const e of list) {
        const runId = e.data?.runId ?? e.id;
        const kind = KINDS[e.data?.signal?.kind];
        const got = kinds.get(runId) ?? [];
        if (kind && got[got.length - 1] !== kind) got.push(kind);
        kinds.set(runId, got);
      }
    });
  });
  return (runId) => kinds.get(runId) ?? [];
}

/**
 * `got` follows `order`: each value is in it, never an earlier one after a
 * later one, and every value of `must` is there.
 */
export function assertInOrder(got, order, must, what) {
  const ranks = got.map((k) => order.indexOf(k));
  const ok = ranks.every((r, i) => r >= 0 && (i === 0 || r >= ranks[i - 1]));
  const missing = must.filter((k) => !got.includes(k));
  if (!ok || missing.length) {
    throw new Error(`${what}: saw ${JSON.stringify(got)}; want the order ${order.join(" → ")} with ${must.join(", ")}`);
  }
}

/** Submit a job from the runs view's form; returns the new run's id. */
export async function submitFromForm(page, pack, inputs = {}) {
  const form = byTestId(page, "submit-form");
  await form.waitFor({ state: "visible" });
  const select = byTestId(page, "submit-pack");
  await page.waitForFunction(
    ([sel, pack]) => [...(document.querySelector(sel)?.options ?? [])].some((o) => o.value === pack),
    ['[data-testid="submit-pack"]', pack],
  );
  await select.selectOption(pack);
  for (const [name, value] of Object.entries(inputs)) {
    await form.locator(`[name="${name}"]`).fill(value);
  }
  await byTestId(page, "submit-button").click();
  await page.waitForURL(/#\/runs\/[0-9a-f-]{36}$/);
  const view = byTestId(page, "run-view");
  await view.waitFor({ state: "visible" });
  return page.url().split("#/runs/")[1];
}

/** Every step of the run view: `[{index, status, value}]`. */
export function steps(page) {
  return page.$$eval('[data-testid="step"]', (els) =>
    els.map((el) => ({
      index: Number(el.getAttribute("data-step-index")),
      status: el.getAttribute("data-status"),
      value: el.querySelector('[role="progressbar"]')?.getAttribute("aria-valuenow") ?? null,
    })),
  );
}

/** The log tail's lines: `[{lineNo, step}]` in page order. */
export function logLines(page) {
  return page.$$eval('[data-testid="log-tail"] [data-line-no]', (els) =>
    els.map((el) => ({ lineNo: Number(el.getAttribute("data-line-no")), step: Number(el.getAttribute("data-step-index")) })),
  );
}

/** Write `ci-artifacts/screenshots/<name>.png` (the whole page). */
export async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true, animations: "disabled" });
  return path;
}

/** The same page at 360 px wide, screenshot, then back to the desktop size. */
export async function shotBoth(page, name) {
  await shot(page, `${name}-desktop`);
  await page.setViewportSize(PHONE);
  await sleep(300);
  await shot(page, `${name}-360`);
  await page.setViewportSize(DESKTOP);
}
