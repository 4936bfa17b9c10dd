// Follow one SSE URL with the `eventsource` package (the WHATWG EventSource
// as browsers implement it) until it reaches CLOSED (readyState 2), as a
// browser does after the server answers a reconnect with 204.
//
// Usage: node eventsource.mjs <url> [max-reconnects]
// Prints one line per event (`event <name> <id>`) and per error
// (`error readyState=<n>`); exits 0 once CLOSED, 1 when the stream was
// reopened more than max-reconnects times (default 5) without closing: an
// EventSource that would reconnect forever.
import { EventSource } from "eventsource";

const [url, maxArg] = process.argv.slice(2);
if (!url) {
  console.error("usage: node eventsource.mjs <url> [max-reconnects]");
  process.exit(64);
}
const maxReconnects = Number(maxArg ?? 5);
const names = ["first_signal", "job", "progress", "step", "log", "plan", "artifact", "completed", "timeout"];

const es = new EventSource(url);
let opens = 0;
es.onopen = () => {
  opens += 1;
  console.log(`open ${opens}`);
  if (opens > maxReconnects + 1) {
    console.log(`still reconnecting after ${maxReconnects} reconnects`);
    es.close();
    process.exit(1);
  }
};
for (const name of names) {
  es.addEventListener(name, (e) => console.log(`event ${name} ${e.lastEventId}`));
}
es.onerror = () => {
  console.log(`error readyState=${es.readyState}`);
  if (es.readyState === EventSource.CLOSED) {
    console.log("closed");
    process.exit(0);
  }
};
