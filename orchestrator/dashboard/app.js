// Continuum's dashboard. Everything a model or a gateway says is put on the
// page as text (textContent, SVG text nodes), never as markup.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem('continuum-token') || '',
  head: 0,
  model: null,        // the head's megamodel
  status: null,       // StatusResponse
  progress: new Map(),// subsystem -> {generation, done, total, steps: Map(step -> {state, reason})}
  lastSeq: null,      // the last event shown
  nodes: new Map(),   // component id -> SVG group
  selected: null,
  // Figures the browser tests read (and anyone curious, from the console).
  stats: { renders: 0, lastGraphMs: 0, lastStatusMs: 0, events: 0, longestTaskMs: 0, longTasks: 0 },
};
window.continuum = state;

// The page's own measure of its responsiveness: main-thread tasks over 50 ms.
if (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes.includes('longtask')) {
  new PerformanceObserver((list) => {
    for (const t of list.getEntries()) {
      state.stats.longTasks++;
      state.stats.longestTaskMs = Math.max(state.stats.longestTaskMs, t.duration);
    }
  }).observe({ type: 'longtask', buffered: true });
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function banner(text, isError) {
  const b = $('banner');
  if (!text) { b.hidden = true; return; }
  b.textContent = text;
  b.className = isError ? 'error' : '';
  b.hidden = false;
}

function ago(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  return new Date(ms).toLocaleString();
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (state.token) opts.headers.Authorization = 'Bearer ' + state.token;
  const r = await fetch(path, opts);
  if (r.status === 401) askToken();
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error || message; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, message);
  }
  return r.json();
}

function askToken() {
  $('token-form').hidden = false;
  banner('This orchestrator needs a token: paste one made by `continuum token` (read is enough to watch).', true);
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.token = $('token').value.trim();
  sessionStorage.setItem('continuum-token', state.token);
  $('token-form').hidden = true;
  banner('');
  reloadAll();
  connect(true);
});

// ------------------------------------------------------------------ state

// The API names states in lower case (`running`, `failed`); anything else
// it might say later counts as unknown.
const STATES = new Set(['pending', 'deploying', 'running', 'failed', 'unknown']);
const stateOf = (c) => (c && STATES.has(c.state) ? c.state : 'unknown');
const phaseName = (p) => String(p || 'unknown').toLowerCase();

// What colour a component gets: its reported state, "offline" when its
// gateway holds no link (the last report is kept but may be stale), and
// "rolled back" when its gateway rolled the generation that failed back.
function displayState(sub, c, component) {
  // What a gateway without a link last said may no longer hold.
  if (sub && sub.gateway && !sub.gateway.connected) return 'offline';
  // A gateway without a bridge reports no status of its own: its link says it.
  if (!c && component && component.kind === 'gateway' && sub && sub.gateway) {
    return sub.gateway.connected ? 'running' : 'offline';
  }
  if (!c) return 'unknown';
  const s = stateOf(c);
  if (s === 'failed' && c.rolled_back_to > 0) return 'rolled-back';
  return s;
}

function statusIndex() {
  const subs = new Map();
  const comps = new Map();
  for (const s of (state.status && state.status.subsystems) || []) {
    subs.set(s.subsystem, s);
    for (const c of s.components || []) comps.set(s.subsystem + '/' + c.component, c);
  }
  return { subs, comps };
}

// ------------------------------------------------------------------ subsystems

function renderSubsystems() {
  const box = $('subsystems');
  box.replaceChildren();
  for (const s of (state.status && state.status.subsystems) || []) {
    const phase = phaseName(s.phase);
    const card = el('div', { class: 'card', 'data-subsystem': s.subsystem });
    card.append(el('h3', {}, s.subsystem || '(outside subsystems)', el('span', { class: 'badge p-' + phase }, phase.replace('_', ' '))));
    const g = s.gateway;
    card.append(el('div', { class: 'muted' },
      'gateway ', s.gateway_id || 'none', g ? (g.connected ? ' · online' : ' · offline') : ' · never registered',
      ' · target generation ', s.target_generation, g ? ' · runs ' + g.observed_generation : ''));
    const p = state.progress.get(s.subsystem);
    if (p && p.total > 0) {
      const bar = el('progress', { max: p.total, value: p.done });
      card.append(el('div', {}, `generation ${p.generation}: ${p.done} of ${p.total} steps`), bar);
      const steps = el('ul', { class: 'steps' });
      for (const [step, st] of p.steps) {
        steps.append(el('li', { class: st.state, title: st.reason || '' }, st.text || step, st.reason ? ': ' + st.reason : ''));
      }
      card.append(steps);
    }
    const failed = (s.components || []).filter((c) => stateOf(c) === 'failed');
    if (failed.length) {
      const ul = el('ul', { class: 'failures' });
      for (const c of failed) ul.append(el('li', {}, c.component, ': ', c.reason || 'failed'));
      card.append(ul);
    }
    if (s.live) {
      const n = (s.live.added || 0) + (s.live.removed || 0) + (s.live.changed || 0) + (s.live.links_added || 0) + (s.live.links_removed || 0);
      card.append(el('div', { class: 'muted' }, n === 0 ? 'live diff: none' : `live diff: ${s.live.added || 0} to add, ${s.live.removed || 0} to remove, ${s.live.changed || 0} to change`));
    }
    box.append(card);
  }
  if (!box.children.length) box.append(el('p', { class: 'muted' }, 'No revision yet: apply a megamodel (continuum apply FILE).'));
}

// The newest staged rollout: where it stands, and pause, resume or abort
// while it may still start waves.
function renderRollout(r) {
  const box = $('staged');
  box.replaceChildren();
  box.hidden = !r;
  if (!r) return;
  const st = String(r.state || 'unknown').replace('_', ' ');
  const line = el('div', { class: 'row' },
    el('strong', {}, `Rollout of revision ${r.revision}`), ' ',
    el('span', { class: 'badge p-' + (st === 'completed' ? 'converged' : st === 'running' ? 'deploying' : st === 'paused' || st === 'superseded' ? 'waiting' : 'failed') }, st),
    ` wave ${(r.waves || []).length} · ${r.released || 0} of ${r.total || 0} released · ${r.converged || 0} converged · ${r.failed || 0} failing`,
    r.reason ? ' — ' + r.reason : '');
  const act = (action, label, danger) => el('button', {
    type: 'button', class: danger ? 'danger' : '', 'data-action': action,
    onclick: async () => {
      try {
        await api('/api/rollout', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ action, revision: r.revision }),
        });
        reloadAll();
      } catch (e) { banner(`Cannot ${action} the rollout: ${e.message}`, true); }
    },
  }, label);
  if (st === 'running') line.append(act('pause', 'Pause'));
  if (st === 'paused' || st === 'halted') line.append(act('resume', 'Resume'));
  if (st === 'running' || st === 'paused' || st === 'halted') line.append(act('abort', 'Abort and roll back', true));
  box.append(line);
}

// ------------------------------------------------------------------ gateways

function renderGateways() {
  const body = $('gateways').tBodies[0];
  body.replaceChildren();
  const rows = [];
  for (const s of (state.status && state.status.subsystems) || []) {
    if (s.gateway) rows.push([s.gateway, s.target_generation]);
    else if (s.gateway_id) rows.push([{ id: s.gateway_id, subsystem: s.subsystem }, s.target_generation]);
  }
  for (const g of (state.status && state.status.unassigned) || []) rows.push([g, 0]);
  for (const [g, target] of rows) {
    const b = g.bridge;
    body.append(el('tr', { 'data-gateway': g.id },
      el('td', {}, g.id),
      el('td', {}, g.subsystem || '—'),
      el('td', { class: g.connected ? 'online' : 'offline' }, g.connected ? 'online' : (g.last_seen_unix_ms ? 'offline' : 'never registered')),
      el('td', {}, ago(g.last_seen_unix_ms)),
      el('td', {}, `${g.observed_generation || 0} / ${target}`),
      el('td', {}, b ? `global ${b.global_connected ? 'up' : 'down'}, local ${b.local_connected ? 'up' : 'down'}` : '—'),
      el('td', {}, b ? String(b.queued || 0) : '—'),
      el('td', { class: b && b.dropped ? 'error' : '' }, b ? String(b.dropped || 0) : '—')));
  }
}

// ------------------------------------------------------------------ graph

const NODE_W = 150, NODE_H = 38, GAP_X = 14, GAP_Y = 26, PAD = 14, COLS = 8, MAX_W = 1500;

function modelParts() {
  const mm = state.model;
  if (!mm) return [];
  const parts = (mm.subsystems || []).map((s) => ({ id: s.id || '', components: s.components || [], links: s.links || [] }));
  if ((mm.components || []).length || (mm.links || []).length) {
    parts.push({ id: '', components: mm.components || [], links: mm.links || [] });
  }
  return parts;
}

// Rows by hosting depth: what nothing hosts first, then what it hosts.
function layoutCluster(part) {
  const host = new Map();
  for (const l of part.links) if (l.kind === 'hosting') host.set(l.component, l.host);
  const depth = new Map();
  const depthOf = (id, seen) => {
    if (depth.has(id)) return depth.get(id);
    const h = host.get(id);
    const d = h && !seen.has(h) ? depthOf(h, seen.add(id)) + 1 : 0;
    depth.set(id, d);
    return d;
  };
  const rows = [];
  for (const c of part.components) {
    const d = depthOf(c.id, new Set());
    (rows[d] = rows[d] || []).push(c);
  }
  const pos = new Map();
  let y = PAD + 22, width = 0;
  for (const row of rows.filter(Boolean)) {
    row.forEach((c, i) => {
      const col = i % COLS, line = Math.floor(i / COLS);
      pos.set(c.id, { x: PAD + col * (NODE_W + GAP_X), y: y + line * (NODE_H + GAP_Y) });
      width = Math.max(width, PAD * 2 + (col + 1) * (NODE_W + GAP_X) - GAP_X);
    });
    y += Math.ceil(row.length / COLS) * (NODE_H + GAP_Y);
  }
  return { pos, width: Math.max(width, 220), height: y - GAP_Y + PAD };
}

function renderGraph() {
  const t0 = performance.now();
  const g = $('graph');
  g.replaceChildren();
  state.nodes.clear();
  const defs = svg('defs');
  const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#2f74c0' }));
  defs.append(marker);
  g.append(defs);
  const where = new Map(); // component id -> absolute centre/top/bottom
  const links = [];
  let x = 0, y = 0, lineH = 0, total = 0;
  const clusters = svg('g');
  for (const part of modelParts()) {
    const lay = layoutCluster(part);
    if (x > 0 && x + lay.width > MAX_W) { x = 0; y += lineH + 16; lineH = 0; }
    const cl = svg('g', { class: 'cluster', transform: `translate(${x},${y})`, 'data-subsystem': part.id });
    cl.append(svg('rect', { class: 'frame', width: lay.width, height: lay.height, rx: 8 }));
    cl.append(svg('text', { class: 'title', x: PAD, y: PAD + 6 }, part.id ? 'subsystem ' + part.id : 'outside subsystems'));
    for (const c of part.components) {
      const p = lay.pos.get(c.id);
      const node = svg('g', { class: 'node s-unknown', transform: `translate(${p.x},${p.y})`, 'data-component': c.id, 'data-subsystem': part.id });
      node.append(svg('title', {}, ''));
      node.append(svg('rect', { width: NODE_W, height: NODE_H }));
      const name = c.name || c.id;
      node.append(svg('text', { x: 7, y: 16 }, name.length > 22 ? name.slice(0, 21) + '…' : name));
      node.append(svg('text', { class: 'kind', x: 7, y: 30 }, (c.kind || 'service') + (name !== c.id ? ' · ' + c.id : '')));
      node.addEventListener('click', () => select(part.id, c));
      cl.append(node);
      state.nodes.set(part.id + '/' + c.id, { node, component: c });
      where.set(c.id, { cx: x + p.x + NODE_W / 2, top: y + p.y, bottom: y + p.y + NODE_H });
      total++;
    }
    for (const l of part.links) links.push(l);
    clusters.append(cl);
    x += lay.width + 16;
    lineH = Math.max(lineH, lay.height);
  }
  for (const l of (state.model && state.model.links) || []) links.push(l);
  const edges = svg('g');
  for (const l of links) {
    const [a, b, cls] = l.kind === 'hosting' ? [where.get(l.host), where.get(l.component), 'hosting'] : [where.get(l.from), where.get(l.to), 'communication'];
    if (!a || !b) continue;
    let x1 = a.cx, y1, x2 = b.cx, y2;
    if (b.top >= a.bottom) { y1 = a.bottom; y2 = b.top; }
    else if (a.top >= b.bottom) { y1 = a.top; y2 = b.bottom; }
    else {
      // Side by side: from one's edge to the other's.
      const right = b.cx > a.cx ? 1 : -1;
      x1 = a.cx + right * NODE_W / 2; x2 = b.cx - right * NODE_W / 2;
      y1 = a.top + NODE_H / 2; y2 = b.top + NODE_H / 2;
    }
    const line = svg('line', { class: cls, x1, y1, x2, y2 });
    if (cls === 'communication') line.setAttribute('marker-end', 'url(#arrow)');
    edges.append(line);
  }
  // Edges over the clusters' frames (they end at the nodes' borders).
  g.append(clusters, edges);
  g.setAttribute('width', Math.min(MAX_W, Math.max(x, 300)) + 20);
  g.setAttribute('height', y + lineH + 10);
  if (!total) g.append(svg('text', { x: 12, y: 24 }, 'No components yet.'));
  state.stats.lastGraphMs = performance.now() - t0;
  paintNodes();
}

// Colours and hover text from the latest status, without redrawing.
function paintNodes() {
  const { subs, comps } = statusIndex();
  for (const [key, { node, component }] of state.nodes) {
    const sub = node.getAttribute('data-subsystem');
    const c = comps.get(key);
    const shown = displayState(subs.get(sub), c, component);
    const cls = 'node s-' + shown + (state.selected === key ? ' selected' : '');
    if (node.getAttribute('class') !== cls) node.setAttribute('class', cls);
    const tip = `${component.id} (${component.kind || 'service'}): ${shown}` + (c && c.reason ? '\n' + c.reason : '');
    const title = node.firstChild;
    if (title.textContent !== tip) title.textContent = tip;
  }
  if (state.selected) {
    const n = state.nodes.get(state.selected);
    if (n) showDetails(n.node.getAttribute('data-subsystem'), n.component);
  }
}

function select(sub, c) {
  state.selected = sub + '/' + c.id;
  paintNodes();
}

function showDetails(sub, c) {
  const { subs, comps } = statusIndex();
  const st = comps.get(sub + '/' + c.id);
  const box = $('details');
  const dl = el('dl', {});
  const add = (k, v) => { if (v !== undefined && v !== null && v !== '') dl.append(el('dt', {}, k), el('dd', {}, v)); };
  add('component', c.id);
  add('name', c.name);
  add('kind', c.kind || 'service');
  add('subsystem', sub || '(none)');
  add('state', displayState(subs.get(sub), st, c));
  if (st) {
    add('reason', st.reason);
    add('generation', st.generation);
    add('detail', st.detail);
    add('since', st.since_unix_ms ? new Date(st.since_unix_ms).toLocaleString() : '');
  }
  box.replaceChildren(el('button', { type: 'button', onclick: () => { state.selected = null; box.hidden = true; paintNodes(); } }, 'Close'), dl);
  box.hidden = false;
}

// ------------------------------------------------------------------ diffs

function show(v) { return v === undefined || v === null ? '—' : JSON.stringify(v); }

function renderDiff(target, response, emptyText) {
  target.replaceChildren();
  for (const sd of (response && response.subsystems) || []) {
    const d = sd.diff || {};
    const items = el('ul', {});
    for (const f of d.model || []) items.append(el('li', { class: 'chg' }, 'model ', el('code', {}, f.path), ': ', show(f.old), ' → ', show(f.new)));
    for (const c of d.added || []) items.append(el('li', { class: 'add' }, '+ ', c.id, ' (', c.kind || 'service', ')'));
    for (const c of d.removed || []) items.append(el('li', { class: 'del' }, '− ', c.id, ' (', c.kind || 'service', ')'));
    for (const c of d.changed || []) {
      const li = el('li', { class: 'chg' }, '~ ', c.id, ' (', String(c.action || '').replace(/_/g, ' ').toLowerCase(), ')');
      const fields = el('ul', {});
      for (const f of c.fields || []) fields.append(el('li', {}, el('code', {}, f.path), ': ', show(f.old), ' → ', show(f.new)));
      li.append(fields);
      items.append(li);
    }
    const link = (l) => l.kind === 'hosting' ? `${l.component} hosted on ${l.host}` : `${l.from} → ${l.to}`;
    for (const l of d.links_added || []) items.append(el('li', { class: 'add' }, '+ link ', link(l)));
    for (const l of d.links_removed || []) items.append(el('li', { class: 'del' }, '− link ', link(l)));
    if (!items.children.length) continue;
    target.append(el('div', { class: 'diff', 'data-subsystem': sd.subsystem }, el('h3', {}, sd.subsystem ? 'subsystem ' + sd.subsystem : 'outside subsystems'), items));
  }
  if (!target.children.length) target.append(el('p', { class: 'muted' }, emptyText));
}

// ------------------------------------------------------------------ history

// How a revision was rolled out, when it was staged.
function staged(h, number) {
  const r = (h.rollouts || []).find((x) => x.revision === number);
  return r ? ` (staged in ${(r.waves || []).length} waves: ${String(r.state).replace('_', ' ')})` : '';
}

function renderHistory(h) {
  const body = $('history').tBodies[0];
  body.replaceChildren();
  for (const r of h.revisions || []) {
    const actions = el('td', {});
    if (r.number !== state.head) {
      actions.append(el('button', { type: 'button', onclick: () => confirmRollback(r.number) }, 'Roll back to this'));
    } else {
      actions.append(el('span', { class: 'muted' }, 'head'));
    }
    if (r.number > 1) {
      actions.append(' ', el('button', { type: 'button', onclick: () => compare(r.number - 1, r.number) }, 'Changes'));
    }
    body.append(el('tr', { 'data-revision': r.number },
      el('td', {}, r.number),
      el('td', {}, r.created_unix_ms ? new Date(r.created_unix_ms).toLocaleString() : ''),
      el('td', {}, r.author || ''),
      el('td', {}, (r.message || '') + (r.restores ? ` (restores ${r.restores})` : '') + staged(h, r.number)),
      el('td', {}, r.components),
      actions));
  }
}

async function compare(from, to) {
  $('from').value = from;
  $('to').value = to;
  const target = $('revision-diff');
  try {
    const d = await api(`/api/diff?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
    renderDiff(target, d, `Revisions ${from} and ${to} are equal.`);
    target.prepend(el('h3', {}, `Revision ${from} → ${to}`));
  } catch (e) {
    target.replaceChildren(el('p', { class: 'error' }, e.message));
  }
}

$('compare').addEventListener('submit', (e) => {
  e.preventDefault();
  compare(Number($('from').value), Number($('to').value));
});

let rollbackTo = null;

function confirmRollback(n) {
  rollbackTo = n;
  $('confirm-text').textContent = `Roll back to revision ${n}? A new revision equal to revision ${n} becomes the head, and every gateway converges to it.`;
  $('confirm-error').hidden = true;
  $('confirm-ok').disabled = false;
  $('confirm').showModal();
}

$('rollback-typed').addEventListener('click', () => {
  const n = Number($('rollback-to').value);
  if (!Number.isInteger(n) || n < 1) {
    banner('Give the number of the revision to roll back to.', true);
    return;
  }
  confirmRollback(n);
});

$('confirm-ok').addEventListener('click', async (e) => {
  e.preventDefault();
  $('confirm-ok').disabled = true;
  try {
    const r = await api('/api/rollback', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ to: rollbackTo, expected_base: state.head }),
    });
    $('confirm').close();
    banner(`Rolled back to revision ${rollbackTo}: revision ${r.revision ? r.revision.number : "?"} is the head.`);
    reloadAll();
  } catch (err) {
    const box = $('confirm-error');
    box.textContent = 'The rollback was refused: ' + err.message;
    box.hidden = false;
  }
});

// ------------------------------------------------------------------ loading

async function reloadStatus() {
  const t0 = performance.now();
  const [status, live] = await Promise.all([api('/api/status'), api('/api/diff')]);
  state.status = status;
  const head = status.head || 0;
  if (head !== state.head || !state.model) {
    state.head = head;
    $('head').textContent = head ? 'revision ' + head : 'no revision';
    if (head) {
      const [m, h] = await Promise.all([api('/api/model'), api('/api/history?limit=50')]);
      state.model = m.model ? m.model.json : null;
      $('model-name').textContent = state.model ? state.model.name || '' : '';
      renderHistory(h);
    } else {
      state.model = null;
    }
    renderGraph();
  } else {
    paintNodes();
  }
  renderRollout(status.rollout);
  renderSubsystems();
  renderGateways();
  renderDiff($('live-diff'), live, 'Nothing to do: every gateway runs its target.');
  state.stats.lastStatusMs = performance.now() - t0;
  state.stats.renders++;
}

let reloading = null, again = false;
// Events come in bursts: one reload at a time, and one more after it if
// anything arrived meanwhile.
function reloadAll() {
  if (reloading) { again = true; return; }
  reloading = reloadStatus()
    .catch((e) => { if (!(e instanceof ApiError && e.status === 401)) banner('Cannot read the orchestrator: ' + e.message, true); })
    .finally(() => {
      reloading = null;
      if (again) { again = false; setTimeout(reloadAll, 100); }
    });
}

// ------------------------------------------------------------------ events

function describe(name, e) {
  const k = (e.kind && e.kind[name]) || {};
  switch (name) {
    case 'revision': return [`revision ${k.number} by ${k.author || 'unknown'}${k.message ? ': ' + k.message : ''}`, false];
    case 'target_sent': return [`${k.subsystem}: generation ${k.generation} sent to ${k.gateway_id}`, false];
    case 'acknowledged': return [`${k.subsystem}: ${k.gateway_id} ${k.accepted ? 'accepted' : 'refused'} generation ${k.generation}${k.reason ? ': ' + k.reason : ''}`, !k.accepted];
    case 'connected': return [`${k.gateway_id} connected (${k.version || '?'})`, false];
    case 'disconnected': return [`${k.gateway_id} disconnected: ${k.reason || ''}`, true];
    case 'component': {
      const s = k.status || {};
      const st = stateOf(s);
      return [`${k.subsystem}/${s.component}: ${st}${s.reason ? ' — ' + s.reason : ''}`, st === 'failed'];
    }
    case 'step': return [`${k.subsystem}: ${k.step} ${k.state}${k.reason ? ' — ' + k.reason : ''} (${k.done}/${k.total})`, k.state === 'failed'];
    case 'current': return [`${k.subsystem}: runs generation ${k.observed_generation}`, false];
    case 'diverged': return [`${k.subsystem}: ran a local model while cut off`, true];
    case 'rollout': return [`rollout of revision ${k.revision}: ${String(k.state || '').replace('_', ' ')}, wave ${(k.waves || []).length}${k.reason ? ' — ' + k.reason : ''}`, ['halted', 'rolled_back'].includes(k.state)];
    default: return [name, false];
  }
}

// Events arrive in bursts (a rollout of 100 gateways sends thousands): each
// chunk read from the stream is handled at once, with one DOM update.
function onEvents(batch) {
  const list = $('activity');
  const items = document.createDocumentFragment();
  for (const [name, e] of batch.slice(-300)) {
    const [text, bad] = describe(name, e);
    items.prepend(el('li', { class: bad ? 'bad' : '', value: e.seq }, new Date(e.unix_ms).toLocaleTimeString(), ' ', text));
  }
  for (const [name, e] of batch) {
    state.lastSeq = e.seq;
    state.stats.events++;
    if (name !== 'step') continue;
    const k = e.kind.step;
    let p = state.progress.get(k.subsystem);
    if (!p || p.generation !== k.generation) {
      p = { generation: k.generation, done: 0, total: 0, steps: new Map() };
      state.progress.set(k.subsystem, p);
    }
    p.done = k.done; p.total = k.total;
    // A flash reports its progress as the same step with a stage and a
    // percentage ("flash firmware f onto d: writing 40%"): one line, updated.
    const key = k.step.replace(/: [^:]*\d+%$/, '');
    p.steps.set(key, { state: k.state, reason: k.reason, text: k.step });
  }
  list.prepend(items);
  while (list.children.length > 300) list.lastChild.remove();
  reloadAll();
}

function setLive(on, text) {
  const l = $('live');
  l.textContent = text;
  l.className = 'pill ' + (on ? 'on' : 'off');
}

let retry = 500;

// Follows /api/events with fetch (so the token travels as a header), parses
// server-sent events, and resumes after the last one seen.
async function connect(fresh) {
  const query = state.lastSeq !== null && !fresh ? 'after=' + state.lastSeq : 'tail=200';
  const headers = state.token ? { Authorization: 'Bearer ' + state.token } : {};
  let r;
  try {
    r = await fetch('/api/events?' + query, { headers });
  } catch (e) {
    return reconnect('cannot reach the orchestrator');
  }
  if (r.status === 410) {
    // The events after the last one shown are gone: say so, then start over
    // from the full state and the newest event.
    let why = '';
    try { why = (await r.json()).error; } catch (_) { /* not JSON */ }
    banner(`Some events were missed while disconnected (${why}). The page reloaded the full state; the activity list has a gap.`, true);
    state.lastSeq = null;
    state.progress.clear();
    reloadAll();
    return connect(true);
  }
  if (r.status === 401) { askToken(); return setLive(false, 'needs a token'); }
  if (!r.ok || !r.body) return reconnect('the event stream was refused (' + r.status + ')');
  setLive(true, 'live');
  retry = 500;
  reloadAll();
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      const batch = [];
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let name = 'message', data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).trimStart();
        }
        if (!data) continue;
        const payload = JSON.parse(data);
        if (name === 'hello') {
          if (state.lastSeq === null) state.lastSeq = payload.after;
        } else if (name === 'failure') {
          banner('The event stream failed: ' + payload.error, true);
        } else {
          batch.push([name, payload]);
        }
      }
      if (batch.length) onEvents(batch);
    }
  } catch (e) {
    // The connection broke: resume below.
  }
  reconnect('the event stream ended');
}

function reconnect(why) {
  setLive(false, 'reconnecting');
  $('live').title = why;
  setTimeout(() => connect(false), retry);
  retry = Math.min(retry * 2, 10000);
}

setInterval(() => { if (state.status) renderGateways(); }, 5000);
reloadAll();
connect(true);
