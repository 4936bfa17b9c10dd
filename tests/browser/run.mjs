// Runs the dashboard scenarios one after the other in Debian's Chromium,
// each against a server process of its own, and prints PASS or FAIL per
// scenario; exits 1 when any failed. tests/browser.rs runs it.
//
// Usage: node run.mjs --bin <path to runsignal> [--parent-pipe] [scenario ...]
// (default: every scenario). Screenshots: ci-artifacts/screenshots/.
// `--parent-pipe`: stop when standard input closes (tests/browser.rs keeps
// a pipe open while it waits).
import { SHOTS, launch } from "./lib/page.mjs";

import live from "./scenarios/live.mjs";
import cancel from "./scenarios/cancel.mjs";
import restart from "./scenarios/restart.mjs";
import token from "./scenarios/token.mjs";
import sse from "./scenarios/sse.mjs";
import narrow from "./scenarios/narrow.mjs";

const ALL = [live, cancel, restart, token, sse, narrow];
/** One scenario's bound: it fails rather than hangs. */
const SCENARIO_TIMEOUT_MS = 240_000;

const args = process.argv.slice(2);
const at = args.indexOf("--bin");
if (at < 0 || !args[at + 1]) {
  console.error("usage: node run.mjs --bin <path to runsignal> [scenario ...]");
  process.exit(64);
}
const bin = args[at + 1];
const parentPipe = args.includes("--parent-pipe");
const wanted = args.filter((a, i) => i !== at && i !== at + 1 && a !== "--parent-pipe");
const unknown = wanted.filter((w) => !ALL.some((s) => s.name === w));
if (unknown.length) {
  console.error(`unknown scenario(s) ${unknown.join(", ")}; known: ${ALL.map((s) => s.name).join(", ")}`);
  process.exit(64);
}
const chosen = wanted.length ? ALL.filter((s) => wanted.includes(s.name)) : ALL;

// The parent (cargo test) closes our stdin when it goes away: stop then,
// and the `exit` handler in lib/server.mjs kills the servers we started.
if (parentPipe) {
  process.stdin.on("end", () => process.exit(2));
  process.stdin.resume();
}

const browser = await launch();
let passed = 0;
let failed = 0;
for (const scenario of chosen) {
  const started = Date.now();
  console.log(`---- ${scenario.name}: ${scenario.title}`);
  try {
    // Past the bound, stop everything (its server too, by the exit handler).
    const bound = setTimeout(() => {
      console.log(`FAIL ${scenario.name}: timed out after ${SCENARIO_TIMEOUT_MS / 1000} s`);
      process.exit(1);
    }, SCENARIO_TIMEOUT_MS);
    try {
      await scenario.run({ bin, browser });
    } finally {
      clearTimeout(bound);
    }
    passed += 1;
    console.log(`PASS ${scenario.name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${scenario.name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${e.stack ?? e}`);
  }
}
await browser.close();
console.log(`screenshots: ${SHOTS}`);
console.log(`browser scenarios: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
