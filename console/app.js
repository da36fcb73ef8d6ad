// The agentbus console: one page, views chosen by the URL's hash, each
// reading /api/v1 with the token typed in (kept in this tab's session
// storage, sent only as a bearer header). Every value from the server is
// put into the page as text (textContent, never HTML), and the page's
// Content-Security-Policy allows no inline code. Views refresh by polling
// (every 2 s, backing off to 30 s after errors, paused while the tab is
// hidden); nothing runs when the page is closed.
'use strict';

const API = '/api/v1';
const KEY = 'agentbus.token';
const POLL_MS = 2000;
const MAX_BACKOFF_MS = 30000;

// Everything known about the signed-in caller; replaced whole on sign-in
// and sign-out, so nothing one token saw survives into another's view.
let session = fresh(null);

function fresh(token) {
  return { token, admin: false, readAs: null, samples: new Map(), rate: null, generation: 0, timer: null, delay: POLL_MS };
}

// --- building the page (text only) ---------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function text(v) {
  if (v === null || v === undefined) return '—';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

// A payload as pretty JSON, in a <pre>, as text.
function payload(v) {
  return el('pre', {}, v === undefined ? '' : JSON.stringify(v, null, 2));
}

// Credits: the server's amounts have two decimals and stay below 10^13,
// exact in a JS number; shown with their two decimals.
function money(v) {
  return typeof v === 'number' ? v.toFixed(2) : text(v);
}

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function statusCell(status) {
  return el('span', { class: 'status-' + String(status).replace(/[^a-z_]/g, '') }, text(status));
}

function table(columns, rows, empty) {
  if (!rows.length) return el('p', { class: 'muted' }, empty || 'Nothing here.');
  return el('table', {},
    el('thead', {}, el('tr', {}, columns.map(([title]) => el('th', {}, title)))),
    el('tbody', {}, rows.map((r) => el('tr', {}, columns.map(([, cell]) => el('td', {}, cell(r)))))));
}

function card(label, value, id) {
  return el('div', { class: 'card', 'data-card': id }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value));
}

function link(href, label) {
  return el('a', { href }, label);
}

function banner(message, ok) {
  const b = document.getElementById('banner');
  b.textContent = message || '';
  b.className = ok ? 'ok' : '';
  b.hidden = !message;
}

function put(...nodes) {
  const main = document.getElementById('main');
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

// --- the API --------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + session.token };
  // The admin reads one tenant's data as that tenant (GET only; the sink
  // view stays every tenant's).
  if (session.admin && session.readAs && method === 'GET' && !path.startsWith('/sink')) {
    headers['X-Agentbus-Tenant'] = session.readAs;
  }
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store', credentials: 'omit' });
  let data = null;
  try { data = await res.json(); } catch (_) { /* an empty or non-JSON answer */ }
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || res.status + ' ' + res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

const enc = encodeURIComponent;

// --- views ------------------------------------------------------------------

async function overview() {
  const [credits, jobs, agents, dlq, sink] = await Promise.all([
    api('GET', '/credits'),
    api('GET', '/jobs?limit=200'),
    api('GET', '/agents?limit=1000'),
    api('GET', '/dlq?limit=50'),
    api('GET', '/sink'),
  ]);
  const hourAgo = Date.now() - 3600 * 1000;
  const running = jobs.jobs.filter((j) => j.status === 'running' || j.status === 'spawning').length;
  const finished = jobs.jobs.filter((j) => j.completed_at && Date.parse(j.completed_at) >= hourAgo).length;
  const done = jobs.jobs.reduce((n, j) => n + j.progress.completed + j.progress.failed, 0);
  const now = Date.now();
  const prev = session.rate;
  session.rate = { at: now, done };
  const rate = prev && now > prev.at ? Math.max(0, (done - prev.done) * 1000 / (now - prev.at)) : null;
  const alive = agents.instances.filter((a) => a.status === 'running' || a.status === 'idle').length;
  const stale = agents.instances.filter((a) => a.status === 'stale').length;
  const outbox = sink.outboxes[0] || {};
  put(
    el('h1', {}, 'Overview'),
    el('h2', {}, 'Credits'),
    el('div', { class: 'cards' },
      card('total', money(credits.total), 'total'), card('reserved', money(credits.reserved), 'reserved'),
      card('spent', money(credits.spent), 'spent'), card('available', money(credits.available), 'available')),
    el('h2', {}, 'Work'),
    el('div', { class: 'cards' },
      card('jobs running', running, 'running'), card('finished in the last hour', finished, 'finished'),
      card('items/s', rate === null ? '…' : rate.toFixed(1), 'rate'),
      card('agents alive', alive, 'alive'), card('agents stale', stale, 'stale'),
      card('sink lag', (outbox.oldest_age_secs || 0).toFixed(1) + ' s', 'lag'),
      card('dead letters', dlq.next ? dlq.count + '+' : dlq.count, 'dlq')),
  );
}

function progressBar(job) {
  const pct = job.progress.progress_pct;
  return el('span', {}, el('progress', { max: 100, value: pct, 'data-job': job.id }), ' ', pct.toFixed(0) + '%');
}

async function jobsView() {
  const page = await api('GET', '/jobs?limit=50');
  put(
    el('h1', {}, 'Jobs'),
    el('p', { class: 'muted' }, page.total + ' jobs, newest first'),
    table([
      ['job', (j) => link('#/jobs/' + enc(j.id), j.id)],
      ['task', (j) => text(j.task)],
      ['status', (j) => statusCell(j.status)],
      ['progress', (j) => progressBar(j)],
      ['items', (j) => j.progress.completed + ' / ' + j.progress.total],
      ['created', (j) => when(j.created_at)],
    ], page.jobs, 'No jobs yet.'),
  );
}

function sparkline(samples) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', '320');
  svg.setAttribute('height', '60');
  if (samples.length > 1) {
    const t0 = samples[0].at;
    const span = Math.max(1, samples[samples.length - 1].at - t0);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', samples.map((s) => ((s.at - t0) / span * 316 + 2).toFixed(1) + ',' + (58 - s.pct * 0.56).toFixed(1)).join(' '));
    svg.append(line);
  }
  return svg;
}

async function jobView(id) {
  const [job, results, dlq] = await Promise.all([
    api('GET', '/jobs/' + enc(id)),
    api('GET', '/jobs/' + enc(id) + '/results?limit=20&order=desc'),
    api('GET', '/dlq?limit=50'),
  ]);
  const samples = session.samples.get(id) || [];
  samples.push({ at: Date.now(), pct: job.progress.progress_pct });
  session.samples.set(id, samples.slice(-300));
  const live = job.status === 'running' || job.status === 'spawning';
  const dead = dlq.dead_letters.filter((d) => d.kind === 'item' && String(d.source).includes(id));
  put(
    el('h1', {}, 'Job ', el('span', { id: 'job-id' }, job.id)),
    el('div', { class: 'cards' },
      card('status', statusCell(job.status), 'status'),
      card('progress', progressBar(job), 'progress'),
      card('completed', job.progress.completed + ' / ' + job.progress.total, 'completed'),
      card('failed', job.progress.failed, 'failed'),
      card('retried', job.progress.retried, 'retried')),
    el('h2', {}, 'Progress over time (while this page is open)'),
    sparkline(session.samples.get(id)),
    el('h2', {}, 'Credits'),
    el('div', { class: 'cards' },
      card('reserved', money(job.credits.reserved), 'reserved'), card('spent', money(job.credits.spent), 'spent'),
      card('refunded', money(job.credits.refunded), 'refunded'),
      card('still reserved', money(job.credits.still_reserved), 'still_reserved')),
    live && !session.admin ? el('p', {}, el('button', { id: 'cancel', type: 'button', onclick: () => cancelJob(job) }, 'Cancel job…')) : null,
    el('h2', {}, 'Most recent results (20)'),
    table([
      ['item', (r) => r.item_index],
      ['output', (r) => payload(r.output)],
      ['completed', (r) => when(r.completed_at)],
    ], results.results, 'No results yet.'),
    el('h2', {}, 'Dead-lettered items'),
    table([
      ['item', (d) => text(d.item_index)],
      ['reason', (d) => text(d.reason)],
      ['attempts', (d) => text(d.attempts)],
      ['input', (d) => payload(d.payload)],
    ], dead, 'None.'),
  );
}

async function cancelJob(job) {
  const pending = job.progress.pending;
  if (!window.confirm('Cancel job ' + job.id + '? Its ' + pending + ' unfinished items are refunded.')) return;
  try {
    const out = await api('POST', '/jobs/' + enc(job.id) + '/cancel', { cancelled_by: 'console', reason: 'cancelled from the console' });
    banner('Cancelled: ' + out.cancelled_items + ' items cancelled, ' + money(out.credits_refunded) + ' credits refunded.', true);
  } catch (e) {
    banner('Cancel refused: ' + e.message);
  }
  refresh();
}

async function agentsView() {
  const list = await api('GET', '/agents?limit=500&inbox=true');
  put(
    el('h1', {}, 'Agents'),
    table([
      ['instance', (a) => link('#/agents/' + enc(a.instance_id), a.instance_id)],
      ['agent', (a) => text(a.agent_id)],
      ['status', (a) => statusCell(a.status)],
      ['last heartbeat', (a) => when(a.heartbeat_at)],
      ['inbox', (a) => a.inbox ? a.inbox.messages + ' kept' : '—'],
      ['delivered, unread', (a) => a.inbox ? a.inbox.delivered_unread : '—'],
      ['job', (a) => text(a.job_id)],
    ], list.instances, 'No agent instances registered.'),
  );
}

async function agentView(id) {
  const [agent, inbox, pending] = await Promise.all([
    api('GET', '/agents/' + enc(id)),
    api('GET', '/agents/' + enc(id) + '/messages?limit=50'),
    api('GET', '/agents/' + enc(id) + '/messages?status=pending&limit=500'),
  ]);
  put(
    el('h1', {}, 'Agent ', agent.instance_id),
    el('div', { class: 'cards' },
      card('status', statusCell(agent.status), 'status'), card('agent', text(agent.agent_id), 'agent'),
      card('last heartbeat', when(agent.heartbeat_at), 'heartbeat'),
      card('messages listed', inbox.count + (inbox.next ? '+' : ''), 'depth'),
      card('pending', pending.count + (pending.next ? '+' : ''), 'pending')),
    el('h2', {}, 'Inbox (first 50)'),
    table([
      ['from', (m) => text(m.from_instance_id)],
      ['type', (m) => text(m.message_type)],
      ['status', (m) => statusCell(m.status)],
      ['payload', (m) => payload(m.payload)],
      ['sent', (m) => when(m.sent_at || m.created_at)],
    ], inbox.messages, 'The inbox is empty.'),
  );
}

// Filters live in the hash (#/invocations?status=failed) so a view can be linked.
function hashQuery() {
  const q = location.hash.split('?')[1] || '';
  return new URLSearchParams(q);
}

async function invocationsView() {
  const q = hashQuery();
  const params = new URLSearchParams();
  for (const k of ['status', 'job_id', 'caller']) if (q.get(k)) params.set(k, q.get(k));
  params.set('limit', '100');
  const page = await api('GET', '/invocations?' + params.toString());
  const input = (name, label) => el('label', {}, label + ' ', el('input', { name, value: q.get(name) || '' }));
  const form = el('form', { class: 'filters', id: 'inv-filters' },
    el('label', {}, 'invoke id ', el('input', { name: 'invoke_id' })),
    input('job_id', 'job'), input('caller', 'caller'),
    el('label', {}, 'status ', el('select', { name: 'status' },
      ['', 'pending', 'completed', 'timeout', 'failed'].map((s) => el('option', { value: s, selected: q.get('status') === s }, s || 'any')))),
    el('button', { type: 'submit' }, 'Search'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const id = String(f.get('invoke_id') || '').trim();
    if (id) { location.hash = '#/invocations/' + enc(id); return; }
    const p = new URLSearchParams();
    for (const k of ['job_id', 'caller', 'status']) if (f.get(k)) p.set(k, String(f.get(k)));
    location.hash = '#/invocations?' + p.toString();
  });
  put(
    el('h1', {}, 'Invocations'),
    form,
    table([
      ['invocation', (i) => link('#/invocations/' + enc(i.invoke_id), i.invoke_id)],
      ['caller', (i) => text(i.caller_instance_id)],
      ['target', (i) => text(i.target_instance_id)],
      ['status', (i) => statusCell(i.status)],
      ['credits', (i) => money(i.credits_charged)],
      ['started', (i) => when(i.started_at)],
    ], page.invocations, 'No invocations match.'),
  );
  return { poll: false };
}

async function invocationView(id) {
  const inv = await api('GET', '/invocations/' + enc(id));
  const rows = Object.entries(inv).flatMap(([k, v]) => [el('dt', {}, k),
    el('dd', {}, (v !== null && typeof v === 'object') ? payload(v) : text(v))]);
  put(el('h1', {}, 'Invocation ', inv.invoke_id), el('dl', { class: 'kv', id: 'audit' }, rows));
}

async function dlqView() {
  const page = await api('GET', '/dlq?limit=50');
  const replay = async (entry) => {
    try {
      const out = await api('POST', '/dlq/' + enc(entry) + '/replay');
      banner('Replayed ' + out.entry_id + ' (now ' + out.new_entry_id + ').', true);
    } catch (e) {
      banner('Replay of ' + entry + ' refused: ' + e.message);
    }
  };
  const replayAll = async () => {
    if (!window.confirm('Replay all ' + page.count + ' dead letters listed?')) return;
    const answers = [];
    for (const d of page.dead_letters) {
      try { await api('POST', '/dlq/' + enc(d.entry_id) + '/replay'); answers.push(d.entry_id + ': replayed'); }
      catch (e) { answers.push(d.entry_id + ': ' + e.message); }
    }
    banner(answers.join('; '), true);
    refresh();
  };
  put(
    el('h1', {}, 'Dead letters'),
    page.count && !session.admin ? el('p', {}, el('button', { type: 'button', id: 'replay-all', onclick: replayAll }, 'Replay all listed')) : null,
    table([
      ['entry', (d) => text(d.entry_id)],
      ['kind', (d) => text(d.kind)],
      ['reason', (d) => text(d.reason)],
      ['attempts', (d) => text(d.attempts)],
      ['item', (d) => text(d.item_index)],
      ['payload', (d) => payload(d.payload)],
      ['', (d) => session.admin ? '' : el('button', { type: 'button', 'data-replay': d.entry_id, onclick: async () => { await replay(d.entry_id); refresh(); } }, 'Replay')],
    ], page.dead_letters, 'No dead letters.'),
  );
}

// Blackboard reads are metered like any read: this view reads only when
// asked (no polling).
async function blackboardView() {
  const list = await api('GET', '/namespaces');
  put(
    el('h1', {}, 'Blackboard'),
    el('p', { class: 'muted' }, 'Reading a namespace is charged as any blackboard read; this view does not refresh by itself.'),
    table([['namespace', (n) => link('#/blackboard/' + enc(n), n)]], list.namespaces, 'No namespaces.'),
  );
  return { poll: false };
}

async function namespaceView(ns) {
  const key = hashQuery().get('key');
  const [top, aggregate, keys] = await Promise.all([
    api('GET', '/namespaces/' + enc(ns) + '/top?k=10'),
    api('GET', '/namespaces/' + enc(ns) + '/aggregate'),
    api('GET', '/namespaces/' + enc(ns) + '/keys?limit=50'),
  ]);
  const value = key ? await api('GET', '/namespaces/' + enc(ns) + '/entries/' + enc(key)).catch((e) => ({ error: e.message })) : null;
  put(
    el('h1', {}, 'Namespace ', ns),
    el('h2', {}, 'Aggregates'), payload(aggregate),
    el('h2', {}, 'Top 10'),
    table([['key', (e) => text(e.key)], ['value', (e) => payload(e.value)]], top.entries, 'No numeric entries.'),
    el('h2', {}, 'Keys (first 50)'),
    table([
      ['key', (e) => link('#/blackboard/' + enc(ns) + '?key=' + enc(e.key), e.key)],
      ['value', (e) => payload(e.value)],
    ], keys.entries, 'No keys.'),
    key ? el('h2', {}, 'Value of ', key) : null,
    key ? payload(value) : null,
  );
  return { poll: false };
}

async function sinkView() {
  const page = await api('GET', '/sink?limit=200');
  put(
    el('h1', {}, 'Sink'),
    el('p', { class: 'muted' }, session.admin ? 'Every tenant (admin token): read one tenant’s data with “view”.' : 'This tenant’s outbox.'),
    table([
      ['tenant', (o) => session.admin
        ? el('span', {}, text(o.tenant), ' ', el('button', { type: 'button', 'data-read-as': o.tenant, onclick: () => readAs(o.tenant) }, 'view'))
        : text(o.tenant)],
      ['events waiting', (o) => text(o.events)],
      ['in flight', (o) => text(o.in_flight)],
      ['lag', (o) => (o.oldest_age_secs || 0).toFixed(1) + ' s'],
      ['refused (stranded)', (o) => text(o.stranded)],
    ], page.outboxes, 'No outboxes.'),
  );
}

// --- routing and polling ----------------------------------------------------

function route() {
  const [path] = location.hash.replace(/^#\/?/, '').split('?');
  const [head, id] = path.split('/').map(decodeURIComponent);
  if (session.admin && !session.readAs && head !== 'sink') return () => sinkView();
  switch (head) {
    case 'jobs': return id ? () => jobView(id) : jobsView;
    case 'agents': return id ? () => agentView(id) : agentsView;
    case 'invocations': return id ? () => invocationView(id) : invocationsView;
    case 'dlq': return dlqView;
    case 'blackboard': return id ? () => namespaceView(id) : blackboardView;
    case 'sink': return sinkView;
    default: return overview;
  }
}

function markNav() {
  const head = location.hash.replace(/^#\/?/, '').split(/[/?]/)[0] || 'overview';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === '#/' + head);
}

// Renders the current view and schedules its next refresh. A view left (a
// new hash, a sign-out) is abandoned: its generation no longer matches.
async function refresh() {
  if (!session.token) return;
  clearTimeout(session.timer);
  const generation = ++session.generation;
  markNav();
  let poll = true;
  try {
    const out = await route()();
    if (generation !== session.generation) return;
    poll = !(out && out.poll === false);
    session.delay = POLL_MS;
    const b = document.getElementById('banner');
    if (!b.classList.contains('ok')) banner('');
  } catch (e) {
    if (generation !== session.generation) return;
    if (e.status === 401) { signOut('The token was refused.'); return; }
    banner(e.message);
    session.delay = Math.min(session.delay * 2, MAX_BACKOFF_MS);
  }
  if (poll) session.timer = setTimeout(tick, session.delay);
}

function tick() {
  if (document.hidden) { session.timer = setTimeout(tick, session.delay); return; }
  refresh();
}

async function signIn(token) {
  session = fresh(token);
  // The admin token is refused by tenant endpoints and accepted by the sink's.
  try {
    await api('GET', '/credits');
  } catch (e) {
    if (e.status === 403) session.admin = true;
    else { signOut(e.status === 401 ? 'The token was refused.' : e.message); return; }
  }
  sessionStorage.setItem(KEY, token);
  document.getElementById('nav').hidden = session.admin;
  document.getElementById('signout').hidden = false;
  document.getElementById('who').textContent = session.admin ? 'admin' : 'tenant token';
  if (session.admin) location.hash = '#/sink';
  banner('');
  refresh();
}

// The admin's view of one tenant: read-only, and nothing of the tenant
// viewed before it carries over.
function readAs(tenant) {
  session.readAs = tenant;
  session.samples = new Map();
  session.rate = null;
  document.getElementById('nav').hidden = false;
  document.getElementById('who').textContent = 'admin, reading ' + tenant + ' (read-only)';
  banner('');
  if (location.hash === '#/overview') refresh(); else location.hash = '#/overview';
}

function signOut(message) {
  clearTimeout(session.timer);
  session = fresh(null);
  sessionStorage.removeItem(KEY);
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  put(signInForm());
  banner(message || '');
}

function signInForm() {
  const form = el('form', { id: 'signin' },
    el('h1', {}, 'Sign in'),
    el('p', {}, 'A tenant token shows that tenant; the admin token shows every tenant, read-only. The token stays in this tab (session storage) and is sent only to this server.'),
    el('label', {}, 'Token ', el('input', { id: 'token', type: 'password', autocomplete: 'off', required: true })),
    ' ', el('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    signIn(document.getElementById('token').value.trim());
  });
  return form;
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('signout').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', () => { banner(''); refresh(); });
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved); else signOut();
});
