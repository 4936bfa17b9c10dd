// runsignal dashboard: one ES module, no framework, no build step
// (ADR 0038). It uses only the public API: REST for lists and actions, one
// multiplexed WebSocket for live data (EventSource and first-signal polling
// as the fallback), and batches DOM writes per animation frame.

const API = '/api/v1/orchestrator';
const KINDS = ['queued', 'started', 'phase', 'blocked', 'failed', 'succeeded', 'canceled', 'unavailable'];
const PHASES = ['resolve', 'fetch', 'restore', 'analyze', 'policy', 'report', 'unknown'];
const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
const JOB_TERMINAL = new Set(['done', 'failed', 'canceled']);
const LOG_MAX = 500; // log lines kept per job
const RELIST_MS = 5000; // runs are re-listed this often (new runs appear)
const POLL_MS = 5000; // first-signal polls of a run without a live stream
const POLL_PARALLEL = 4; // polls in flight at once (browsers allow 6 connections per host)
const MAX_EVENTSOURCES = 4; // fallback: EventSources at once, for the same reason
const PENDING_WINDOW = 64; // WebSocket subscribes awaiting their answer at once
const STREAM_EVENTS = {
  run: ['first_signal', 'job', 'progress', 'completed'],
  job: ['job', 'progress', 'step', 'log', 'artifact', 'completed'],
  'pack-run': ['plan', 'step', 'log', 'artifact', 'completed'],
};
const STREAM_PATH = { run: 'runs', job: 'jobs', 'pack-run': 'pack-runs' };

const $ = (id) => document.getElementById(id);
const stats = { events: 0, renders: 0, transport: 'connecting' };
window.__rsStats = stats;
const forceSse = new URLSearchParams(location.search).get('transport') === 'sse';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const jitter = (ms) => Math.round(ms * (0.5 + Math.random()));

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  e.append(...children);
  return e;
}

// Write only what changed: DOM writes are the expensive part.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}

// ---------------------------------------------------------------------------
// Credentials (sessionStorage) and REST

const store = {
  get token() { return sessionStorage.getItem('runsignal.token') || ''; },
  get tenant() { return sessionStorage.getItem('runsignal.tenant') || ''; },
  save(token, tenant) {
    if (token) sessionStorage.setItem('runsignal.token', token);
    if (tenant) sessionStorage.setItem('runsignal.tenant', tenant);
    else sessionStorage.removeItem('runsignal.tenant');
  },
  clearToken() { sessionStorage.removeItem('runsignal.token'); },
  clear() { sessionStorage.removeItem('runsignal.token'); sessionStorage.removeItem('runsignal.tenant'); },
};

function authHeaders(extra = {}) {
  const h = { ...extra };
  if (store.token) h.Authorization = `Bearer ${store.token}`;
  if (store.tenant) h['X-Tenant-Id'] = store.tenant;
  return h;
}

class Problem extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function problemOf(res) {
  try { return await res.json(); } catch { return null; }
}

// A REST call with the stored credentials. 401 brings the prompt back.
async function api(path, { method = 'GET', body, headers = {}, raw = false } = {}) {
  const h = authHeaders({ Accept: 'application/json', ...headers });
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method, headers: h, cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) {
    const p = new Problem(401, await problemOf(res));
    unauthorized(p.message);
    throw p;
  }
  if (raw) return res;
  if (!res.ok) throw new Problem(res.status, await problemOf(res));
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

// Stream URLs carry what EventSource cannot send as headers.
function streamUrl(path, extra = {}) {
  const q = new URLSearchParams(extra);
  if (store.tenant) q.set('tenant', store.tenant);
  if (store.token) q.set('access_token', store.token);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// ---------------------------------------------------------------------------
// Errors and announcements

function showError(detail) {
  setText($('error'), detail);
  $('error-box').hidden = false;
}
function clearError() {
  $('error-box').hidden = true;
  $('error').textContent = '';
}
function announce(text) {
  setText($('announce'), text);
}

// ---------------------------------------------------------------------------
// Connection state and stream count (header)

function setConn(state) {
  stats.transport = state;
  const node = $('conn-state');
  setAttr(node, 'data-state', state);
  setText(node, state);
}

let countQueued = false;
function updateCount() {
  if (countQueued) return;
  countQueued = true;
  queueMicrotask(() => {
    countQueued = false;
    let n = 0;
    for (const w of wants.values()) if (w.state === 'open') n++;
    const node = $('stream-count');
    setAttr(node, 'data-count', String(n));
    setText(node, String(n));
  });
}

// ---------------------------------------------------------------------------
// Render batching: models mark themselves dirty, one frame writes the DOM.

const dirtyRuns = new Set();
const dirtyJobs = new Set();
let frameQueued = false;
function schedule() {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(render);
}
function markRun(run) { dirtyRuns.add(run); schedule(); }
function markJob(job) { dirtyJobs.add(job); schedule(); }

function render() {
  frameQueued = false;
  stats.renders++;
  const again = [];
  for (const run of dirtyRuns) {
    run.shownKind = run.trail.length ? run.trail.shift() : run.kind;
    if (run.trail.length) again.push(run);
    renderRow(run);
  }
  if (view && dirtyRuns.has(view.run)) renderRunHead(view.run);
  dirtyRuns.clear();
  for (const run of again) markRun(run);
  if (orderDirty) renderOrder();
  for (const job of dirtyJobs) renderJob(job);
  dirtyJobs.clear();
  if (filterDirty) applyFilter();
}

// ---------------------------------------------------------------------------
// Runs: the model behind the runs table

const runs = new Map(); // runId → run
let runOrder = []; // run ids as the last list had them, newest first
let orderDirty = false;
let filterDirty = false;
let listLimit = 100;

function runModel(id) {
  let run = runs.get(id);
  if (!run) {
    run = {
      id, name: null, status: 'pending', packs: null, listed: false, listSeq: 0,
      kind: null, trail: [], shownKind: null, phase: null, stage: null, message: null, eta: null, etaAt: 0,
      outcome: null, actions: null, jobId: null, etag: null, stageHint: null,
      nextPoll: 0, polling: false, row: null, cells: null,
    };
    runs.set(id, run);
  }
  return run;
}

function statusFromKind(kind, current) {
  if (kind === 'succeeded' || kind === 'failed' || kind === 'canceled') return kind;
  if (kind === 'unavailable' || kind == null) return current;
  return 'running';
}

// Every kind the page learns is shown for at least one frame, in order,
// even when several arrive within one (a replay, a quick job).
function setKind(run, kind) {
  if (kind !== run.kind) {
    run.trail.push(kind);
    // Bounded while the tab is hidden (no frames): the last few suffice.
    if (run.trail.length > 8) run.trail.shift();
  }
  run.kind = kind;
}

// A signal from a stream (`first_signal` data, SPEC §4.3).
function applyStreamSignal(run, data) {
  const s = data.signal || {};
  setKind(run, typeof s.kind === 'string' ? s.kind : KINDS[s.kind] || 'unavailable');
  run.phase = PHASES[s.phase] || 'unknown';
  run.stage = s.stage ?? run.phase;
  run.message = s.summary ?? null;
  run.eta = s.etaSeconds ?? null;
  run.etaAt = Date.now();
  run.outcome = s.lastKnownOutcome ?? null;
  run.actions = s.nextActions ?? null;
  run.jobId = s.jobId ?? run.jobId;
  run.etag = data.etag || run.etag;
  run.status = statusFromKind(run.kind, run.status);
  // The stream names the stage by phase number only: a `phase` signal of
  // a stage outside SPEC's phases reads its stage string once (see
  // `fetchStage`); the run's progress events keep it current after that.
  if (s.stage == null && run.kind === 'phase' && run.phase === 'unknown' && !run.stageTried) run.stageWanted = true;
  markRun(run);
}

// A signal from `GET …/first-signal` (SPEC §4.2).
function applyRestSignal(run, body, etag) {
  const fs = body.firstSignal || {};
  setKind(run, fs.type || 'unavailable');
  run.stage = fs.stage ?? null;
  run.phase = null;
  run.message = fs.message ?? null;
  run.eta = fs.etaSeconds ?? null;
  run.etaAt = Date.now();
  run.outcome = fs.lastKnownOutcome ?? null;
  run.actions = fs.nextActions ?? null;
  run.etag = etag || body.summaryEtag || run.etag;
  run.status = statusFromKind(run.kind, run.status);
  markRun(run);
}

function etaText(run) {
  if (run.eta == null || TERMINAL.has(run.kind)) return '—';
  const left = Math.max(0, run.eta - Math.floor((Date.now() - run.etaAt) / 1000));
  const m = Math.floor(left / 60);
  const s = left % 60;
  return m ? `${m} min ${String(s).padStart(2, '0')} s` : `${s} s`;
}

// The stage a stream names only as a phase number: the deciding job's own
// stage string when it reported one that is not a known phase.
function stageText(run) {
  if (run.stage == null) return '—';
  if (run.phase === 'unknown' && run.stageHint && !TERMINAL.has(run.kind)) return run.stageHint;
  return run.stage;
}

function runLabel(run) {
  if (run.name) return run.name;
  if (run.packs && run.packs.length) return run.packs.join(', ');
  return `run ${run.id.slice(0, 8)}`;
}

function renderRow(run) {
  if (!run.listed) return;
  if (!run.row) {
    const link = el('a', { href: `#/runs/${run.id}` });
    const sub = el('span', { class: 'sub', text: run.id.slice(0, 8) });
    const kind = el('span', { class: 'kind' });
    const cells = {
      name: el('td', { role: 'cell', 'data-field': 'name', 'data-label': 'Run' }, el('div', {}, link, sub)),
      kind: el('td', { role: 'cell', 'data-field': 'kind', 'data-label': 'Signal' }, kind),
      stage: el('td', { role: 'cell', 'data-field': 'stage', 'data-label': 'Stage' }),
      message: el('td', { role: 'cell', 'data-field': 'message', 'data-label': 'Message' }),
      eta: el('td', { role: 'cell', 'data-field': 'eta', 'data-label': 'ETA' }),
      outcome: el('td', { role: 'cell', 'data-field': 'outcome', 'data-label': 'Last outcome' }),
    };
    run.row = el('tr', { role: 'row', 'data-testid': 'run-row', 'data-run-id': run.id, 'data-kind': '' },
      cells.name, cells.kind, cells.stage, cells.message, cells.eta, cells.outcome);
    run.cells = { ...cells, link, kindBadge: kind };
    orderDirty = true;
  }
  const c = run.cells;
  const kind = run.shownKind || '';
  setAttr(run.row, 'data-kind', kind);
  setAttr(run.row, 'data-status', run.status);
  setText(c.link, runLabel(run));
  setText(c.kindBadge, kind || 'no signal');
  setText(c.stage, stageText(run));
  setText(c.message, run.message ?? '—');
  setAttr(c.message, 'title', run.message ?? '');
  setText(c.eta, etaText(run));
  setText(c.outcome, run.outcome ? run.outcome.status : '—');
  if (run.outcome) setAttr(c.outcome, 'title', `run ${run.outcome.runId} finished ${run.outcome.finishedAt}`);
  if (run.shownStatus !== run.status) {
    // The status filter may now hide or show the row.
    run.shownStatus = run.status;
    filterDirty = true;
  }
}

function renderOrder() {
  orderDirty = false;
  const body = $('runs-body');
  const rows = [];
  for (const id of runOrder) {
    const run = runs.get(id);
    if (!run) continue;
    if (!run.row) renderRow(run);
    rows.push(run.row);
  }
  let same = body.children.length === rows.length;
  for (let i = 0; same && i < rows.length; i++) same = body.children[i] === rows[i];
  if (!same) body.replaceChildren(...rows);
  $('runs-empty').hidden = rows.length > 0;
  filterDirty = true;
}

function applyFilter() {
  filterDirty = false;
  const status = $('filter-status').value;
  const needle = $('filter-name').value.trim().toLowerCase();
  let shown = 0;
  for (const id of runOrder) {
    const run = runs.get(id);
    if (!run || !run.row) continue;
    const hay = `${run.name || ''} ${(run.packs || []).join(' ')} ${run.id}`.toLowerCase();
    const visible = (!status || run.status === status) && (!needle || hay.includes(needle));
    if (run.row.hidden === visible) run.row.hidden = !visible;
    if (visible) shown++;
  }
  setText($('runs-summary'), `${shown} of ${runOrder.length} runs shown`);
}

// ETAs count down client-side between signals.
setInterval(() => {
  for (const run of runs.values()) {
    if (run.eta != null && !TERMINAL.has(run.kind)) markRun(run);
  }
}, 1000);

// ---------------------------------------------------------------------------
// Runs list: re-listed periodically (that is how new runs are discovered)

let relistTimer = 0;
let relisting = false;

async function relist() {
  clearTimeout(relistTimer);
  if (relisting || !started) return;
  relisting = true;
  try {
    const list = [];
    let cursor = null;
    do {
      const q = new URLSearchParams({ limit: String(Math.min(200, listLimit - list.length)) });
      if (cursor) q.set('cursor', cursor);
      const page = await api(`${API}/runs?${q}`);
      list.push(...page.runs);
      cursor = page.next;
    } while (cursor && list.length < listLimit);
    reconcile(list);
    if (transport.mode === 'sse') setConn('sse');
    await fillPacks();
  } catch (e) {
    if (transport.mode === 'sse' && !(e instanceof Problem)) setConn('offline');
  } finally {
    relisting = false;
    relistTimer = setTimeout(relist, RELIST_MS);
  }
}

function reconcile(list) {
  const ids = list.map((r) => r.runId);
  const keep = new Set(ids);
  for (const id of runOrder) {
    if (keep.has(id)) continue;
    const run = runs.get(id);
    if (!run) continue;
    run.listed = false;
    if (run.row) run.row.remove();
    run.row = null;
    release('run', id, 'list');
    if (!(view && view.run === run)) runs.delete(id);
  }
  list.forEach((r, i) => {
    const run = runModel(r.runId);
    const before = `${run.listed}|${run.name}|${run.status}`;
    run.listed = true;
    run.rank = i;
    run.name = r.name;
    if (r.lastSeq >= run.listSeq) {
      // The list is at least as new as what streams told us.
      const w = wants.get(`run:${run.id}`);
      const streamed = w && w.after != null ? w.after : 0;
      if (r.lastSeq >= streamed) run.status = r.status;
      if (r.lastSeq > run.listSeq && w && w.state === 'done' && r.lastSeq > streamed) revive(w);
      if (r.lastSeq > run.listSeq && (!w || w.state !== 'open')) run.nextPoll = 0;
      run.listSeq = r.lastSeq;
    }
    want('run', run.id, 'list', 0);
    if (`${run.listed}|${run.name}|${run.status}` !== before) markRun(run);
  });
  runOrder = ids;
  orderDirty = true;
  schedule();
}

// Packs per run (for names and the name filter): runs created by
// `POST /jobs` have no name, so the jobs list tells what they run.
async function fillPacks() {
  const missing = new Set();
  for (const id of runOrder) {
    const run = runs.get(id);
    if (run && run.packs == null && run.status !== 'pending') missing.add(id);
  }
  if (!missing.size) return;
  const found = new Map();
  let cursor = null;
  let pages = Math.ceil(listLimit / 200) + 1;
  do {
    const q = new URLSearchParams({ limit: '200' });
    if (cursor) q.set('cursor', cursor);
    const page = await api(`/jobs?${q}`);
    for (const job of page.jobs) {
      if (!found.has(job.run_id)) found.set(job.run_id, new Set());
      found.get(job.run_id).add(job.pack);
    }
    cursor = page.next;
  } while (cursor && --pages > 0 && [...missing].some((id) => !found.has(id)));
  for (const id of missing) {
    const run = runs.get(id);
    if (!run) continue;
    run.packs = found.has(id) ? [...found.get(id)] : [];
    markRun(run);
  }
  filterDirty = true;
}

// ---------------------------------------------------------------------------
// Streams the page wants. A want is one (stream, id) with the seq seen last
// (`after`), held by owners (the list, the run view); the transport opens it
// over the WebSocket or as an EventSource and resumes it with `after`.

const wants = new Map(); // `${stream}:${id}` → want

function want(stream, id, owner, prio, after = null, onEvent = null) {
  const key = `${stream}:${id}`;
  let w = wants.get(key);
  if (!w) {
    w = { key, stream, id, owners: new Set(), prio, after, state: 'idle', retryAt: 0, onEvent, es: null };
    wants.set(key, w);
  }
  w.owners.add(owner);
  if (prio > w.prio) w.prio = prio;
  if (onEvent) w.onEvent = onEvent;
  transport.pump();
  return w;
}

function release(stream, id, owner) {
  const key = `${stream}:${id}`;
  const w = wants.get(key);
  if (!w) return;
  w.owners.delete(owner);
  if (owner === 'view') {
    w.prio = 0;
    // Fallback: the list polls; only the run view holds EventSources.
    if (w.es && w.owners.size) {
      w.es.close();
      w.es = null;
      if (w.state !== 'done') w.state = 'idle';
      updateCount();
    }
  }
  if (w.owners.size) return;
  wants.delete(key);
  transport.close(w);
  updateCount();
  transport.pump();
}

// A finished stream that has more to say (a retry added a job to a run).
function revive(w) {
  if (w.state !== 'done') return;
  w.state = 'idle';
  transport.pump();
}

// One event of a stream, from either transport.
function deliver(w, event, data, seq) {
  stats.events++;
  if (Number.isFinite(seq) && (w.after == null || seq > w.after)) w.after = seq;
  if (w.stream === 'run') onRunEvent(w.id, event, data, seq);
  else if (w.onEvent) w.onEvent(event, data, seq);
  if (event === 'completed') {
    w.state = 'done';
    transport.ended(w);
    updateCount();
  }
}

// ---------------------------------------------------------------------------
// Transport: one WebSocket (default) or the fallback (EventSource for the
// open run view, first-signal polling for the runs list).

const transport = {
  mode: forceSse || typeof WebSocket === 'undefined' ? 'sse' : 'websocket',
  ws: null,
  ready: false,
  everOpened: false,
  failures: 0,
  attempt: 0,
  cap: Infinity, // subscriptions one socket may hold (learned from the server)
  timer: 0,
  pinger: 0,
  awaitingPong: false,
  pumpQueued: false,

  start() {
    if (this.mode === 'websocket') this.connect();
    else { setConn('sse'); this.pump(); }
  },

  stop() {
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    this.awaitingPong = false;
    if (this.ws) { this.ws.onclose = null; this.ws.close(1000); this.ws = null; }
    this.ready = false;
    for (const w of wants.values()) {
      if (w.es) { w.es.close(); w.es = null; }
      if (w.state !== 'done') w.state = 'idle';
    }
    updateCount();
  },

  connect() {
    clearTimeout(this.timer);
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const q = store.tenant ? `?tenant=${encodeURIComponent(store.tenant)}` : '';
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}${API}/ws${q}`);
    } catch {
      this.fallback();
      return;
    }
    this.ws = ws;
    this.ready = false;
    if (stats.transport !== 'offline') setConn('connecting');
    ws.onopen = () => {
      this.everOpened = true;
      this.failures = 0;
      if (store.token) ws.send(JSON.stringify({ op: 'auth', token: store.token, ...(store.tenant ? { tenant: store.tenant } : {}) }));
      else this.onReady();
    };
    ws.onmessage = (m) => this.onFrame(m.data);
    ws.onclose = (ev) => this.onClose(ev);
  },

  onReady() {
    this.ready = true;
    this.attempt = 0;
    setConn('websocket');
    this.pump();
    this.heartbeat();
  },

  // A socket can die without a close (a cut network, a sleeping laptop):
  // a ping every 10 s; one still unanswered at the next ends the socket,
  // and the usual reconnect resumes every stream.
  heartbeat() {
    clearInterval(this.pinger);
    const ws = this.ws;
    this.pinger = setInterval(() => {
      if (this.ws !== ws || !this.ready) { clearInterval(this.pinger); return; }
      if (this.awaitingPong) { ws.close(4000, 'no pong'); this.onClose({ code: 4000 }); return; }
      this.awaitingPong = true;
      this.send({ op: 'ping' });
    }, 10000);
  },

  onClose(ev) {
    if (this.ws) this.ws.onclose = null;
    this.ws = null;
    this.ready = false;
    this.awaitingPong = false;
    clearInterval(this.pinger);
    for (const w of wants.values()) if (w.state === 'open' || w.state === 'pending') w.state = 'idle';
    updateCount();
    if (ev.code === 4401 || ev.code === 4403) {
      unauthorized(ev.reason || 'the server refused the credential');
      return;
    }
    if (!this.everOpened && ++this.failures >= 3) {
      // Never got a socket: maybe a proxy without WebSocket. Fall back if
      // plain HTTP works.
      api(`${API}/runs?limit=1`).then(() => this.fallback(), () => this.retry());
      return;
    }
    this.retry();
  },

  retry() {
    setConn('offline');
    const delay = jitter(Math.min(10000, 500 * 2 ** this.attempt++));
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  },

  fallback() {
    this.mode = 'sse';
    setConn('sse');
    this.pump();
  },

  send(frame) {
    if (this.ws && this.ready) this.ws.send(JSON.stringify(frame));
  },

  onFrame(text) {
    let f;
    try { f = JSON.parse(text); } catch { return; }
    if (f.op === 'event') {
      const w = wants.get(`${f.stream}:${f.id}`);
      if (w && w.state !== 'idle') deliver(w, f.event, f.data, f.seq);
      return;
    }
    if (f.op === 'authenticated') return this.onReady();
    if (f.op === 'pong') { this.awaitingPong = false; return; }
    if (f.op === 'subscribed') {
      const w = wants.get(`${f.stream}:${f.id}`);
      if (!w) { this.send({ op: 'unsubscribe', stream: f.stream, id: f.id }); return; }
      w.state = f.completed ? 'done' : 'open';
      updateCount();
      this.pump();
      return;
    }
    if (f.op === 'error') return this.onError(f);
  },

  onError(f) {
    const w = f.stream && wants.get(`${f.stream}:${f.id}`);
    if (!w) {
      if (f.code === 'unauthenticated') unauthorized(f.detail);
      else console.warn('runsignal websocket:', f.code, f.detail);
      return;
    }
    switch (f.code) {
      case 'subscription_limit':
        // The socket holds what it may: learn the cap, poll the rest.
        this.cap = Math.max(1, this.active() - 1);
        w.state = 'limited';
        break;
      case 'too_many_streams':
        this.later(w, 5000);
        break;
      case 'subscription_dropped':
        // Fell behind: resume right after the last seq the server sent.
        if (f.after != null) w.after = f.after;
        w.state = 'idle';
        break;
      case 'already_subscribed':
        w.state = 'open';
        break;
      case 'store_unavailable':
        this.later(w, 2000);
        break;
      default:
        // An unknown run or job: nothing will ever come.
        w.state = 'done';
        w.missing = true;
    }
    updateCount();
    this.pump();
  },

  // Open `w` again in `ms` (meanwhile a list run is polled).
  later(w, ms) {
    w.state = 'limited';
    w.retryAt = Date.now() + ms;
    setTimeout(() => this.pump(), ms + 50);
  },

  active() {
    let n = 0;
    for (const w of wants.values()) if (w.state === 'open' || w.state === 'pending') n++;
    return n;
  },

  // Open what is wanted and not open, most important first, within the
  // socket's limits; coalesced to once per task.
  pump() {
    if (this.pumpQueued) return;
    this.pumpQueued = true;
    setTimeout(() => { this.pumpQueued = false; this.doPump(); }, 0);
  },

  doPump() {
    const now = Date.now();
    const waiting = [];
    for (const w of wants.values()) {
      if ((w.state === 'idle' || w.state === 'limited') && w.retryAt <= now) waiting.push(w);
    }
    if (!waiting.length) return;
    const rank = (w) => (w.stream === 'run' ? (runs.get(w.id)?.rank ?? 0) : 0);
    waiting.sort((a, b) => b.prio - a.prio || rank(a) - rank(b));
    if (this.mode === 'sse') return this.pumpSse(waiting);
    if (!this.ready) return;
    let active = this.active();
    let pending = 0;
    for (const w of wants.values()) if (w.state === 'pending') pending++;
    for (const w of waiting) {
      if (pending >= PENDING_WINDOW) break;
      if (active >= this.cap) {
        if (w.prio === 0 || !this.evict()) { w.state = 'limited'; continue; }
        active--;
      }
      const frame = { op: 'subscribe', stream: w.stream, id: w.id };
      if (w.after != null) frame.after = w.after;
      w.state = 'pending';
      this.send(frame);
      active++;
      pending++;
    }
  },

  // Make room for the run view: the list's lowest open run gives its place
  // (it is polled instead).
  evict() {
    let victim = null;
    for (const w of wants.values()) {
      if (w.state !== 'open' || w.prio > 0 || w.stream !== 'run') continue;
      if (!victim || (runs.get(w.id)?.rank ?? 0) > (runs.get(victim.id)?.rank ?? 0)) victim = w;
    }
    if (!victim) return false;
    this.send({ op: 'unsubscribe', stream: victim.stream, id: victim.id });
    victim.state = 'limited';
    updateCount();
    return true;
  },

  // Fallback: EventSources for the run view's streams only; list runs are
  // polled (see `pollLoop`).
  pumpSse(waiting) {
    let open = 0;
    for (const w of wants.values()) if (w.es) open++;
    for (const w of waiting) {
      if (w.prio === 0 || open >= MAX_EVENTSOURCES) continue;
      this.openEventSource(w);
      open++;
    }
  },

  openEventSource(w) {
    const extra = w.after != null ? { lastEventId: String(w.after) } : {};
    const es = new EventSource(streamUrl(`${API}/stream/${STREAM_PATH[w.stream]}/${w.id}`, extra));
    w.es = es;
    w.state = 'pending';
    es.onopen = () => {
      w.state = 'open';
      w.failures = 0;
      setConn('sse');
      updateCount();
    };
    for (const name of STREAM_EVENTS[w.stream]) {
      es.addEventListener(name, (e) => {
        let data;
        try { data = JSON.parse(e.data); } catch { return; }
        deliver(w, name, data, Number(e.lastEventId));
      });
    }
    es.onerror = () => {
      checkReachable();
      if (es.readyState !== EventSource.CLOSED) {
        // The browser reconnects by itself with Last-Event-ID.
        w.state = 'pending';
        updateCount();
        return;
      }
      // Refused (a 401 surfaces through checkReachable; 404, 429, 503) or
      // ended with a 204: retry with backoff, give up after 5 in a row.
      es.close();
      if (w.es === es) w.es = null;
      if (w.state === 'done' || !wants.has(w.key)) return;
      w.failures = (w.failures || 0) + 1;
      if (w.failures > 5) {
        w.state = 'done';
        updateCount();
        return;
      }
      this.later(w, jitter(Math.min(10000, 1000 * 2 ** w.failures)));
      updateCount();
    };
    updateCount();
  },

  // A stream ended by the server (after `completed`).
  ended(w) {
    if (w.es) { w.es.close(); w.es = null; }
    this.pump();
  },

  close(w) {
    if (w.es) { w.es.close(); w.es = null; }
    if (this.mode === 'websocket' && (w.state === 'open' || w.state === 'pending')) {
      this.send({ op: 'unsubscribe', stream: w.stream, id: w.id });
    }
    w.state = 'done';
  },
};

// Fallback: a stream broke. Is the server there (a 401 also surfaces here)?
let lastCheck = 0;
function checkReachable() {
  if (Date.now() - lastCheck < 1000) return;
  lastCheck = Date.now();
  api(`${API}/runs?limit=1`).then(() => setConn('sse'), (e) => { if (!(e instanceof Problem)) setConn('offline'); });
}

// The runs list without a live stream (fallback, or past the socket's
// subscription limit): poll each run's first signal with If-None-Match.
async function pollLoop() {
  for (;;) {
    await sleep(500);
    if (!started) continue;
    const now = Date.now();
    const fresh = [];
    const due = [];
    for (const id of runOrder) {
      const run = runs.get(id);
      if (run && !run.polling && run.nextPoll <= now && needsPoll(run)) (run.kind == null ? fresh : due).push(run);
    }
    // Runs without any signal yet first, then top to bottom; a pool of
    // POLL_PARALLEL requests.
    const stages = [];
    for (const id of runOrder) {
      const run = runs.get(id);
      if (run && run.stageWanted && !run.polling) stages.push(run);
    }
    if (view && view.run.stageWanted && !view.run.polling && !view.run.listed) stages.unshift(view.run);
    const queue = fresh.concat(due);
    let next = 0;
    let nextStage = 0;
    const worker = async () => {
      while (started && next < queue.length) await pollRun(queue[next++]);
      while (started && nextStage < stages.length) await fetchStage(stages[nextStage++]);
    };
    await Promise.all(Array.from({ length: POLL_PARALLEL }, worker));
  }
}

function needsPoll(run) {
  const w = wants.get(`run:${run.id}`);
  if (!w || w.missing || w.es || w.state === 'open' || w.state === 'pending') return false;
  // Over the WebSocket only runs past its subscription limit are polled.
  if (transport.mode === 'websocket' && w.state !== 'limited') return false;
  return run.kind == null || !(TERMINAL.has(run.kind) && TERMINAL.has(run.status));
}

async function pollRun(run) {
  run.polling = true;
  try {
    const headers = run.etag ? { 'If-None-Match': run.etag } : {};
    const res = await api(`${API}/runs/${run.id}/first-signal`, { headers, raw: true });
    if (res.status === 200) applyRestSignal(run, await res.json(), res.headers.get('ETag'));
    if (transport.mode === 'sse') setConn('sse');
  } catch (e) {
    if (transport.mode === 'sse' && !(e instanceof Problem)) setConn('offline');
  } finally {
    run.polling = false;
    run.nextPoll = Date.now() + jitter(POLL_MS);
  }
}

// A stream `phase` signal whose phase is `unknown` may still have a stage
// string (a stage outside SPEC's phases): REST has it. Taken only when the
// answer is the same signal (same ETag) as the stream's.
async function fetchStage(run) {
  run.stageWanted = false;
  run.stageTried = true;
  run.polling = true;
  try {
    const res = await api(`${API}/runs/${run.id}/first-signal`, { raw: true });
    if (res.status !== 200) return;
    const body = await res.json();
    if (res.headers.get('ETag') === run.etag && body.firstSignal) {
      run.stageHint = body.firstSignal.stage;
      markRun(run);
    }
  } catch {
    // A later signal asks again.
  } finally {
    run.polling = false;
  }
}

// ---------------------------------------------------------------------------
// Run stream events (list rows and the run view)

function onRunEvent(runId, event, data) {
  const run = runModel(runId);
  if (event === 'first_signal') applyStreamSignal(run, data);
  else if (event === 'progress' && data.payload) {
    if (data.jobId === run.jobId && data.payload.stage) { run.stageHint = data.payload.stage; markRun(run); }
  } else if (event === 'completed') {
    run.status = statusFromKind(run.kind, run.status);
    markRun(run);
  }
  if (view && view.run === run) onViewRunEvent(event, data);
}

// ---------------------------------------------------------------------------
// Run view: jobs, step plans, log tails, artifacts, next actions

let view = null; // { run, jobs: Map(jobId → job), actionsKey }

function openRunView(runId) {
  if (view && view.run.id === runId) return;
  closeRunView();
  const run = runModel(runId);
  view = { run, jobs: new Map(), fetching: new Set(), actionsKey: null };
  const section = $('run-view');
  section.setAttribute('data-run-id', runId);
  $('jobs').replaceChildren();
  $('run-actions').replaceChildren();
  setText($('run-title'), runLabel(run));
  document.title = `${runLabel(run)} · runsignal`;
  renderRunHead(run);
  // Not followed yet (opened by link, or just submitted): replay the run
  // from its start, so its signal history shows (queued → … → now).
  want('run', runId, 'view', 1, wants.has(`run:${runId}`) ? null : 0);
  loadRun(runId);
}

function closeRunView() {
  if (!view) return;
  for (const job of view.jobs.values()) release('pack-run', job.id, 'view');
  release('run', view.run.id, 'view');
  if (!view.run.listed) runs.delete(view.run.id);
  view = null;
}

async function loadRun(runId) {
  try {
    await packsLoaded; // jobs draw their declared steps
    const [info, jobs] = await Promise.all([
      api(`${API}/runs/${runId}`),
      api(`/jobs?run_id=${runId}&limit=200`),
    ]);
    if (!view || view.run.id !== runId) return;
    const run = view.run;
    run.name = info.name;
    if (!run.packs || !run.packs.length) run.packs = [...new Set(jobs.jobs.map((j) => j.pack))];
    if (info.lastSeq > run.listSeq) run.status = info.status;
    setText($('run-title'), runLabel(run));
    document.title = `${runLabel(run)} · runsignal`;
    for (const j of jobs.jobs) addJob(j);
    // The stage a stream signal names only as a phase number.
    const decider = jobs.jobs.find((j) => j.job_id === run.jobId) || jobs.jobs[jobs.jobs.length - 1];
    if (decider && decider.progress && decider.progress.stage) run.stageHint = decider.progress.stage;
    // No signal and no stream that will bring one (past the socket's limit).
    const w = wants.get(`run:${runId}`);
    const streaming = w && (w.state === 'open' || w.state === 'pending' || w.es);
    if (run.kind == null && !streaming) pollRun(run);
    markRun(run);
  } catch (e) {
    if (e instanceof Problem && e.status === 404) showError(`run ${runId} not found: ${e.message}`);
    else if (e instanceof Problem && e.status !== 401) showError(e.message);
  }
}

function renderRunHead(run) {
  const sig = $('run-signal');
  setAttr(sig, 'data-kind', run.shownKind || '');
  setText(sig, run.shownKind || 'no signal');
  setText($('run-stage'), stageText(run));
  setText($('run-message'), run.message ?? '—');
  setText($('run-eta'), etaText(run));
  setText($('run-outcome'), run.outcome ? `${run.outcome.status} (run ${run.outcome.runId.slice(0, 8)})` : '—');
  const key = JSON.stringify(run.actions || []);
  if (view.actionsKey !== key) {
    view.actionsKey = key;
    $('run-actions').replaceChildren(...(run.actions || []).map(actionButton));
  }
}

function actionButton(a) {
  const b = el('button', { type: 'button', 'data-testid': `action-${a.action}`, text: a.label || a.action });
  b.addEventListener('click', () => runAction(a, b));
  return b;
}

async function runAction(a, button) {
  clearError();
  if (a.action === 'view_logs') {
    const jobId = (a.href.match(/\/jobs\/([^/?]+)/) || [])[1];
    const job = jobId && view && view.jobs.get(jobId);
    if (job) { job.log.scrollIntoView({ block: 'nearest' }); job.log.focus(); }
    return;
  }
  if (a.action === 'download_artifact') return download(a.href);
  button.disabled = true;
  try {
    const body = await api(a.href, { method: a.method || 'POST' });
    announce(`${a.label || a.action}: accepted`);
    if (a.action === 'retry' && body && body.job_id && view) {
      addJob(await api(`/jobs/${body.job_id}`));
      const w = wants.get(`run:${view.run.id}`);
      if (w) revive(w);
    }
  } catch (e) {
    if (!(e instanceof Problem) || e.status !== 401) showError(e.message);
  } finally {
    button.disabled = false;
  }
}

// Artifact downloads need the credential headers, which a plain link cannot
// send: fetch the bytes and hand the browser a blob.
async function download(href) {
  try {
    const res = await api(href, { raw: true, headers: { Accept: '*/*' } });
    if (!res.ok) throw new Problem(res.status, await problemOf(res));
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: decodeURIComponent(href.split('/').pop()) });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    if (!(e instanceof Problem) || e.status !== 401) showError(e.message);
  }
}

// A job the view learns of from an event (a retry, a second submit).
function fetchJob(jobId) {
  if (view.fetching.has(jobId)) return;
  const v = view;
  v.fetching.add(jobId);
  api(`/jobs/${jobId}`).then(addJob, () => {}).finally(() => v.fetching.delete(jobId));
}

function onViewRunEvent(event, data) {
  if (event === 'job' || event === 'completed') {
    if (!data.jobId) return;
    const job = view.jobs.get(data.jobId);
    if (!job) { fetchJob(data.jobId); return; }
    const state = (data.type || '').replace(/^job\./, '');
    if (['queued', 'loading', 'working', 'done', 'failed', 'canceled'].includes(state)) setJobState(job, state);
    if (state === 'blocked') { job.blocked = data.payload && data.payload.blocked ? data.payload.reason : null; markJob(job); }
    if (state === 'failed' && data.payload && data.payload.error) { job.message = data.payload.error.message || data.payload.error.code; markJob(job); }
  } else if (event === 'progress' && data.jobId) {
    const job = view.jobs.get(data.jobId);
    const p = data.payload || {};
    if (job) {
      if (p.message) job.message = p.message;
      if (p.percent != null) job.percent = p.percent;
      if (job.state === 'loading' || job.state === 'queued') setJobState(job, 'working');
      markJob(job);
    }
  }
}

// Terminal states never change; others move as events say.
function setJobState(job, state) {
  if (JOB_TERMINAL.has(job.state) || job.state === state) return;
  job.state = state;
  if (state !== 'queued' && state !== 'working') job.blocked = null;
  markJob(job);
}

function addJob(j) {
  if (!view || j.run_id !== view.run.id) return;
  let job = view.jobs.get(j.job_id);
  if (job) {
    if (!JOB_TERMINAL.has(job.state)) job.state = j.state;
    markJob(job);
    return;
  }
  job = {
    id: j.job_id, pack: j.pack, state: j.state, attempt: j.attempt,
    blocked: j.blocked ? j.blocked.reason : null,
    message: j.error ? j.error.message || j.error.code : j.progress && j.progress.message,
    percent: j.progress && j.progress.percent, steps: new Map(), artifacts: new Map(),
    pendingLines: [], el: null, log: null,
  };
  for (const a of j.artifacts || []) job.artifacts.set(a.name, a);
  const pack = packs.get(j.pack);
  (pack && pack.steps || []).forEach((s, i) => job.steps.set(i, { stepIndex: i, stepName: s.name, status: 'pending' }));
  buildJob(job);
  view.jobs.set(job.id, job);
  const list = $('jobs');
  const after = [...list.children].find((n) => n.getAttribute('data-job-id') > job.id);
  list.insertBefore(job.el, after || null);
  // From seq 0: the whole step history and log (the tail is bounded).
  want('pack-run', job.id, 'view', 1, 0, (event, data) => onPackRunEvent(job, event, data));
  markJob(job);
}

function buildJob(job) {
  const title = `job-${job.id}`;
  job.stateEl = el('span', { class: 'state' });
  job.msgEl = el('p', { class: 'msg' });
  job.stepsEl = el('ol', { class: 'steps', 'aria-label': `Steps of ${job.pack}` });
  job.artEl = el('ul', { class: 'artifacts', 'aria-label': 'Artifacts' });
  job.log = el('div', { class: 'log', 'data-testid': 'log-tail', role: 'log', tabindex: '0', 'aria-label': `Log of job ${job.id}` });
  job.el = el('article', { class: 'job', 'data-testid': 'job', 'data-job-id': job.id, 'data-state': job.state, 'aria-labelledby': title },
    el('h2', { id: title }, el('span', { text: job.pack }), el('code', { text: job.id }), job.stateEl),
    job.msgEl, job.stepsEl, el('h3', { text: 'Artifacts' }), job.artEl, el('h3', { text: 'Log' }), job.log);
}

function onPackRunEvent(job, event, data) {
  if (event === 'plan') {
    for (const s of data.steps || []) job.steps.set(s.stepIndex, s);
  } else if (event === 'step') {
    if (data.status === 'running') {
      // A new attempt starts over: later steps are pending again.
      for (const [i, s] of job.steps) if (i > data.stepIndex && s.status !== 'pending') job.steps.set(i, { ...s, status: 'pending' });
    }
    const old = job.steps.get(data.stepIndex) || {};
    job.steps.set(data.stepIndex, { ...old, ...data, stepName: data.stepName || old.stepName });
  } else if (event === 'log') {
    job.pendingLines.push(data);
    if (job.pendingLines.length > LOG_MAX) job.pendingLines.splice(0, job.pendingLines.length - LOG_MAX);
  } else if (event === 'artifact') {
    job.artifacts.set(data.name, data);
  } else if (event === 'completed') {
    const state = (data.type || '').replace(/^job\./, '');
    if (JOB_TERMINAL.has(state)) setJobState(job, state);
    if (data.payload && data.payload.error) job.message = data.payload.error.message || data.payload.error.code;
  }
  markJob(job);
}

const STEP_VALUE = { pending: 0, running: 50, succeeded: 100, failed: 100, skipped: 100 };

function renderJob(job) {
  if (!job.el) return;
  setAttr(job.el, 'data-state', job.state);
  setText(job.stateEl, job.blocked ? `${job.state} · blocked` : job.state);
  setText(job.msgEl, job.blocked ? `Blocked: ${job.blocked}` : job.message || '');
  // Steps, by index.
  const indexes = [...job.steps.keys()].sort((a, b) => a - b);
  indexes.forEach((i, pos) => {
    const s = job.steps.get(i);
    let li = job.stepsEl.children[pos];
    if (!li || li.getAttribute('data-step-index') !== String(i)) {
      li = stepItem(i);
      job.stepsEl.insertBefore(li, job.stepsEl.children[pos] || null);
    }
    const status = s.status || 'pending';
    const name = `${i + 1}. ${s.stepName || `step ${i + 1}`}`;
    setAttr(li, 'data-status', status);
    setText(li.firstChild, name);
    const bar = li.children[1];
    setAttr(bar, 'aria-valuenow', String(STEP_VALUE[status] ?? 0));
    setAttr(bar, 'aria-valuetext', status);
    setAttr(bar, 'aria-label', name);
    const exit = s.exitCode != null && status === 'failed' ? ` (exit ${s.exitCode})` : '';
    setText(li.lastChild, status + exit);
  });
  // Artifacts.
  for (const [name, a] of job.artifacts) {
    if (job.artEl.querySelector(`[data-name="${CSS.escape(name)}"]`)) continue;
    const link = el('a', { 'data-testid': 'artifact-link', href: a.url, download: name, 'data-name': name, text: name });
    link.addEventListener('click', (e) => { e.preventDefault(); clearError(); download(a.url); });
    job.artEl.append(el('li', {}, link, ` (${a.size} bytes${a.content_type ? `, ${a.content_type}` : ''})`));
  }
  // Log lines: append the new ones, keep the last LOG_MAX, follow the
  // bottom unless the reader scrolled up.
  if (job.pendingLines.length) {
    const log = job.log;
    const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    const frag = document.createDocumentFragment();
    for (const l of job.pendingLines) {
      frag.append(el('div', {
        class: l.stream === 'stderr' ? 'ln err' : 'ln', 'data-line-no': l.lineNo, 'data-step-index': l.stepIndex, text: l.line,
      }));
    }
    job.pendingLines = [];
    log.append(frag);
    let extra = log.childElementCount - LOG_MAX;
    while (extra-- > 0) log.firstElementChild.remove();
    if (follow) log.scrollTop = log.scrollHeight;
  }
}

function stepItem(i) {
  const fill = el('div', { class: 'fill' });
  const bar = el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0' }, fill);
  return el('li', { 'data-testid': 'step', 'data-step-index': i, 'data-status': 'pending' },
    el('span', { class: 'step-name' }), bar, el('span', { class: 'step-status' }));
}

// ---------------------------------------------------------------------------
// Submit form: any declared pack with its inputs

const packs = new Map(); // name → pack
let packsLoaded = Promise.resolve();

function loadPacks() {
  packsLoaded = fetchPacks();
  return packsLoaded;
}

async function fetchPacks() {
  try {
    const body = await api(`${API}/packs`);
    packs.clear();
    for (const p of body.packs) packs.set(p.name, p);
    const select = $('submit-pack');
    const current = select.value;
    select.replaceChildren(...[...packs.keys()].map((name) => el('option', { value: name, text: name })));
    if (packs.has(current)) select.value = current;
    else if (packs.has('demo')) select.value = 'demo';
    renderInputs();
  } catch (e) {
    if (!(e instanceof Problem) || e.status !== 401) showError(`packs: ${e.message}`);
  }
}

function renderInputs() {
  const pack = packs.get($('submit-pack').value);
  setText($('pack-description'), pack ? pack.description || '' : '');
  const fields = (pack && pack.inputs || []).map((input) => {
    const id = `input-${input.name}`;
    return el('label', { for: id }, `${input.name}${input.required ? ' (required)' : ''}`,
      el('input', { id, name: input.name, value: input.default ?? '', required: !!input.required, autocomplete: 'off' }));
  });
  $('submit-inputs').replaceChildren(...fields);
}

async function submitJob(e) {
  e.preventDefault();
  clearError();
  const pack = $('submit-pack').value;
  if (!pack) return showError('choose a pack first');
  const inputs = {};
  for (const input of $('submit-inputs').querySelectorAll('input')) {
    if (input.value !== '' || input.required) inputs[input.name] = input.value;
  }
  const button = $('submit-button');
  button.disabled = true;
  try {
    const body = await api('/jobs', { method: 'POST', body: { pack, inputs } });
    announce(`job ${body.job_id} queued`);
    location.hash = `#/runs/${body.run_id}`;
    // Open the run now (not on the later hashchange), before the re-list
    // follows it from the list: the view replays it from its start.
    route();
    relist();
  } catch (err) {
    if (!(err instanceof Problem) || err.status !== 401) showError(err.message);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// Routing: #/runs[?limit=N], #/runs/<runId>

function route() {
  const hash = location.hash.replace(/^#/, '') || '/runs';
  const [path, query] = hash.split('?');
  const m = path.match(/^\/runs\/([0-9a-fA-F-]{36})$/);
  const limit = Number(new URLSearchParams(query || '').get('limit'));
  const newLimit = Number.isInteger(limit) && limit >= 1 && limit <= 1000 ? limit : 100;
  clearError();
  if (m) {
    $('runs-view').hidden = true;
    $('run-view').hidden = false;
    if (started) openRunView(m[1].toLowerCase());
    else pendingRoute = m[1].toLowerCase();
    $('run-title').focus({ preventScroll: true });
  } else {
    const from = view;
    closeRunView();
    $('run-view').hidden = true;
    $('runs-view').hidden = false;
    document.title = 'Runs · runsignal';
    if (from) $('runs-title').focus({ preventScroll: true });
    if (newLimit !== listLimit) { listLimit = newLimit; relist(); }
  }
}
let pendingRoute = null;

// ---------------------------------------------------------------------------
// Sign-in: probe, prompt, 401 handling

let started = false;
let prompting = false;

async function probe() {
  try {
    const res = await fetch(`${API}/runs?limit=1`, { headers: authHeaders({ Accept: 'application/json' }), cache: 'no-store' });
    return { status: res.status, problem: res.ok ? null : await problemOf(res) };
  } catch {
    return { status: 0, problem: null };
  }
}

function prompt(needToken, why) {
  prompting = true;
  const field = $('login-token-field');
  if (needToken && !$('login-token')) {
    field.replaceChildren(
      el('label', { for: 'login-token', text: 'Token' }),
      el('input', { id: 'login-token', 'data-testid': 'login-token', type: 'password', name: 'token', autocomplete: 'off', required: true }),
    );
  } else if (!needToken) {
    field.replaceChildren();
  }
  setText($('login-tenant-hint'), needToken ? '(optional when the token names one)' : '(required)');
  $('login-tenant').required = !needToken;
  $('login-tenant').value = store.tenant;
  setText($('login-why'), why);
  setText($('login-error'), '');
  const dialog = $('login-dialog');
  if (!dialog.open) dialog.showModal();
  ($('login-token') || $('login-tenant')).focus();
}

function closePrompt() {
  prompting = false;
  const dialog = $('login-dialog');
  if (dialog.open) dialog.close();
}

async function signIn(e) {
  e.preventDefault();
  const tokenInput = $('login-token');
  const token = tokenInput ? tokenInput.value.trim() : '';
  const tenant = $('login-tenant').value.trim();
  if (tokenInput && !token) return setText($('login-error'), 'Enter a token.');
  if (!tokenInput && !tenant) return setText($('login-error'), 'Enter a tenant.');
  if (tenant && !/^[A-Za-z0-9._:-]{1,64}$/.test(tenant)) return setText($('login-error'), 'A tenant is 1–64 characters of A–Z a–z 0–9 . _ : -');
  if (tokenInput) store.clearToken();
  store.save(token, tenant);
  $('login-submit').disabled = true;
  const { status, problem } = await probe();
  $('login-submit').disabled = false;
  if (status === 200) {
    if (tokenInput) tokenInput.value = '';
    closePrompt();
    boot();
    return;
  }
  const detail = (problem && problem.detail) || (status ? `HTTP ${status}` : 'the server cannot be reached');
  if (status === 401) store.clearToken();
  setText($('login-error'), detail);
}

// Without working credentials: ask for what is missing.
async function ensureSignedIn() {
  for (;;) {
    const { status, problem } = await probe();
    if (status === 200) return true;
    if (status === 0) { setConn('offline'); await sleep(2000); continue; }
    if (status === 401) {
      store.clearToken();
      prompt(true, 'This server needs an access token.');
    } else {
      prompt(!!store.token, (problem && problem.detail) || 'Which tenant?');
    }
    return false;
  }
}

function unauthorized(detail) {
  if (prompting) return;
  store.clearToken();
  stopAll();
  prompt(true, `Sign in again: ${detail || 'the credential was refused'}.`);
}

function stopAll() {
  started = false;
  transport.stop();
  clearTimeout(relistTimer);
}

function updateWho() {
  setText($('who'), store.tenant ? `tenant ${store.tenant}` : store.token ? 'token' : '');
}

// Credentials work: load packs, list runs, open the transport.
function boot() {
  if (started) return;
  started = true;
  updateWho();
  transport.attempt = 0;
  transport.start();
  loadPacks();
  relist();
  const target = pendingRoute;
  pendingRoute = null;
  if (target && location.hash.includes(target)) openRunView(target);
  else if (view) loadRun(view.run.id);
}

function signOut() {
  stopAll();
  closeRunView();
  store.clear();
  for (const w of wants.values()) transport.close(w);
  wants.clear();
  runs.clear();
  runOrder = [];
  $('runs-body').replaceChildren();
  updateCount();
  updateWho();
  if (/^#\/runs\/./.test(location.hash)) pendingRoute = location.hash.split('/')[2];
  ensureSignedIn().then((ok) => ok && boot());
}

// ---------------------------------------------------------------------------
// Wiring

function init() {
  $('login-form').addEventListener('submit', signIn);
  // The prompt stays until the credentials work.
  $('login-dialog').addEventListener('cancel', (e) => e.preventDefault());
  $('logout').addEventListener('click', signOut);
  $('error-close').addEventListener('click', clearError);
  $('submit-form').addEventListener('submit', submitJob);
  $('submit-pack').addEventListener('change', renderInputs);
  $('filter-status').addEventListener('change', () => { filterDirty = true; schedule(); });
  $('filter-name').addEventListener('input', () => { filterDirty = true; schedule(); });
  // A click anywhere on a row opens its run (the first cell holds the link
  // for keyboards and screen readers).
  $('runs-body').addEventListener('click', (e) => {
    if (e.target.closest('a')) return;
    const row = e.target.closest('tr[data-run-id]');
    if (row) location.hash = `#/runs/${row.getAttribute('data-run-id')}`;
  });
  window.addEventListener('hashchange', route);
  setConn('connecting');
  updateCount();
  route();
  pollLoop();
  ensureSignedIn().then((ok) => ok && boot());
}

init();
