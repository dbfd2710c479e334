// The rampart dashboard: follows one or several rampart instances through their admin API's event
// stream (`/api/events`) and forces breakers through it (`POST /api/breakers/...`).
//
// The instances come from `targets.json`, fetched relative to this page:
// `[{"name": "...", "base": "...", "events": "..."}]`. The admin API of one rampart answers with
// itself at base "."; a server in front of several (`rampart dashboard`) answers with one entry
// each. Every URL of an instance is made by `targetUrl`, the one place a base is handled. An
// entry with `events` is followed through that shared stream (the fleet view's, one connection
// for every instance: browsers open at most six HTTP/1.1 connections to a server) rather than
// through its own `/api/events`.
//
// Every figure shown is one the API sent; the only values this page makes are the times at which
// it received a transition or a stats event (the timeline's clock and the sparklines' x axis).

/** How far back the latency sparklines go. */
const HISTORY_MS = 5 * 60 * 1000;
/** A hole between two stats longer than this breaks the sparkline (stats come every second). */
const GAP_MS = 3500;
/** No event for this long from a live instance: its connection is taken for lost. */
const STALE_MS = 5000;
/** Reconnection delays: the first, doubled at each failure up to the last. */
const RETRY_FIRST_MS = 1000;
const RETRY_LAST_MS = 5000;
/** Entries kept in the timeline. */
const TIMELINE_MAX = 200;

/** Breaker states, the most alarming first: a route shows the first one its endpoints are in. */
const SEVERITY = ['forced-open', 'open', 'half-open', 'forced-closed', 'closed', 'disabled'];
const LABELS = {
  'forced-open': 'forced open',
  open: 'open',
  'half-open': 'half-open',
  'forced-closed': 'forced closed',
  closed: 'closed',
  disabled: 'no breaker',
  unknown: 'no endpoints',
};

/** Every instance followed, in the order of `targets.json`. */
const targets = [];
/** The streams several instances share, by URL: `{url, members (by base), source, ...}`. */
const shared = new Map();

// === URLs ===

/** The URL of `path` (which starts with "/") on `target`'s admin API. */
function targetUrl(target, path) {
  return target.base.replace(/\/+$/, '') + path;
}

// === Start ===

main();

async function main() {
  const list = await loadTargets();
  const several = list.length > 1;
  const container = document.getElementById('targets');
  for (const entry of list) {
    const target = newTarget(entry, several);
    targets.push(target);
    container.append(target.el);
    connect(target);
  }
  updateStatus();
  setInterval(watchdog, 1000);
}

/** `targets.json`, asked again until it comes and makes sense. */
async function loadTargets() {
  for (let delay = RETRY_FIRST_MS; ; delay = Math.min(delay * 2, RETRY_LAST_MS)) {
    try {
      const response = await fetch('targets.json', { cache: 'no-store' });
      if (!response.ok) {
        throw new Error(`${response.status} ${response.statusText}`);
      }
      const list = await response.json();
      const valid = Array.isArray(list) && list.length > 0
        && list.every((t) => typeof t?.name === 'string' && typeof t?.base === 'string');
      if (!valid) {
        throw new Error('expected [{"name": "...", "base": "..."}, ...]');
      }
      showBanner(null);
      return list;
    } catch (err) {
      showBanner(`Cannot load targets.json (${err.message}): trying again…`);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

// === One instance ===

function newTarget({ name, base, events }, several) {
  const routes = h('div', { class: 'routes' });
  const upstreams = h('div', { class: 'upstreams' });
  const badge = h('span', { class: 'connection' }, 'connecting…');
  const outbox = newOutbox(name);
  const el = h('section', { class: 'target', 'data-target': name, 'data-connection': 'connecting' },
    several ? h('h2', { class: 'instance' }, h('span', { class: 'instance-name' }, name), badge) : '',
    h('p', { class: 'waiting' }, `Waiting for the first stats from ${name}…`),
    h('h3', { class: 'section-title' }, 'Routes'),
    routes,
    h('h3', { class: 'section-title' }, 'Upstreams'),
    upstreams,
    outbox.title,
    outbox.el,
  );
  return {
    name,
    base,
    events: typeof events === 'string' ? events : null,
    stream: null,
    el,
    badge,
    routes,
    upstreams,
    source: null,
    connection: 'connecting',
    /** Why the connection is lost, when the API said (a 503's reason). */
    why: null,
    lastEvent: 0,
    retry: RETRY_FIRST_MS,
    retryTimer: null,
    stats: null,
    history: new Map(),
    cards: new Map(),
    panels: new Map(),
    outbox,
  };
}

function connect(target) {
  if (target.events !== null) {
    join(target);
    return;
  }
  clearTimeout(target.retryTimer);
  // The watchdog counts from here until the first event, which comes at once on a sound stream.
  target.lastEvent = Date.now();
  const source = new EventSource(targetUrl(target, '/api/events'));
  target.source = source;
  source.addEventListener('stats', (event) => onStats(target, parse(event.data)));
  source.addEventListener('transition', (event) => onTransition(target, parse(event.data)));
  // The browser would retry by itself, but not after an answer that is not an event stream (a
  // proxy's 502 while rampart restarts), so every failure is retried here, with a growing delay.
  source.addEventListener('error', () => lose(target));
}

function onStats(target, stats) {
  if (!stats || !Array.isArray(stats.routes) || !Array.isArray(stats.upstreams)) {
    return;
  }
  const now = Date.now();
  target.lastEvent = now;
  target.retry = RETRY_FIRST_MS;
  target.stats = stats;
  record(target, stats, now);
  setConnection(target, 'live');
  render(target);
}

function onTransition(target, change) {
  if (!change) {
    return;
  }
  target.lastEvent = Date.now();
  apply(target.stats, change);
  addTransition(target, describe(change), change);
  render(target);
}

// === A stream shared by several instances ===
//
// The server sends `target-stats` and `target-transition` with `{"target": base, "data": ...}`,
// `target-lost` with `{"target": base, "error": "..."}` when it cannot follow an instance, and
// `ping` every few seconds, so that a silent stream is known for lost.

function join(target) {
  let stream = shared.get(target.events);
  if (!stream) {
    stream = {
      url: target.events,
      members: new Map(),
      source: null,
      lastEvent: 0,
      retry: RETRY_FIRST_MS,
      retryTimer: null,
    };
    shared.set(stream.url, stream);
  }
  stream.members.set(target.base, target);
  target.stream = stream;
  if (stream.source === null && stream.retryTimer === null) {
    openShared(stream);
  }
}

function openShared(stream) {
  stream.retryTimer = null;
  const now = Date.now();
  stream.lastEvent = now;
  for (const member of stream.members.values()) {
    member.lastEvent = now;
  }
  const source = new EventSource(stream.url);
  stream.source = source;
  // The event's member and what it says of it, or nothing for an instance not followed here.
  const on = (name, handle) => source.addEventListener(name, (event) => {
    stream.lastEvent = Date.now();
    const message = parse(event.data);
    const member = message && stream.members.get(message.target);
    if (member) {
      handle(member, message);
    }
  });
  on('target-stats', (member, message) => {
    stream.retry = RETRY_FIRST_MS;
    onStats(member, message.data);
  });
  on('target-transition', (member, message) => onTransition(member, message.data));
  on('target-lost', (member) => setConnection(member, 'lost'));
  source.addEventListener('ping', () => {
    stream.lastEvent = Date.now();
  });
  source.addEventListener('error', () => loseShared(stream));
}

function loseShared(stream) {
  if (stream.source) {
    stream.source.close();
    stream.source = null;
  }
  for (const member of stream.members.values()) {
    setConnection(member, 'lost');
  }
  clearTimeout(stream.retryTimer);
  stream.retryTimer = setTimeout(() => openShared(stream), stream.retry);
  stream.retry = Math.min(stream.retry * 2, RETRY_LAST_MS);
}

function lose(target) {
  if (target.source) {
    target.source.close();
    target.source = null;
  }
  setConnection(target, 'lost');
  clearTimeout(target.retryTimer);
  target.retryTimer = setTimeout(() => connect(target), target.retry);
  target.retry = Math.min(target.retry * 2, RETRY_LAST_MS);
  // An EventSource tells no status: an answer the API gave (every stream place taken, 503)
  // is asked for once more, to be shown.
  whyLost(target).then((why) => {
    if (target.connection === 'lost' && target.why !== why) {
      target.why = why;
      updateStatus();
    }
  });
}

/**
 * Why the events of `target` cannot be had: the status and `error` of the API's answer, or null
 * when nothing answers or the stream opens now (it is let go at once).
 */
async function whyLost(target) {
  const controller = new AbortController();
  try {
    const response = await fetch(targetUrl(target, '/api/events'), { signal: controller.signal });
    if (response.ok) {
      return null;
    }
    const body = await response.json().catch(() => null);
    const error = body && typeof body.error === 'string' ? `: ${body.error}` : '';
    return `${response.status}${error}`;
  } catch {
    return null;
  } finally {
    controller.abort();
  }
}

/**
 * A connection that brings nothing (a host gone without a word, a connection attempt that hangs)
 * is lost too.
 */
function watchdog() {
  const now = Date.now();
  for (const stream of shared.values()) {
    if (stream.source !== null && now - stream.lastEvent > STALE_MS) {
      loseShared(stream);
    }
  }
  for (const target of targets) {
    if (now - target.lastEvent <= STALE_MS) {
      continue;
    }
    if (target.source !== null) {
      lose(target);
    } else if (target.stream?.source) {
      // The shared stream goes on for the others; this one comes back with its next stats.
      setConnection(target, 'lost');
    }
  }
}

function setConnection(target, connection) {
  const before = target.connection;
  if (before === connection) {
    return;
  }
  target.connection = connection;
  if (connection !== 'lost') {
    target.why = null;
  }
  target.el.dataset.connection = connection;
  target.badge.textContent = connection;
  if (connection === 'lost' && before === 'live') {
    addTransition(target, 'connection lost', { kind: 'connection', to: 'lost' });
  } else if (connection === 'live' && before === 'lost') {
    addTransition(target, 'connected again', { kind: 'connection', to: 'live' });
  }
  updateStatus();
}

function updateStatus() {
  const status = document.getElementById('status');
  const live = targets.filter((t) => t.connection === 'live');
  const lost = targets.filter((t) => t.connection === 'lost');
  let connection = 'connecting';
  if (lost.length > 0) {
    connection = 'lost';
  } else if (targets.length > 0 && live.length === targets.length) {
    connection = 'live';
  }
  status.dataset.connection = connection;
  if (targets.length === 1) {
    status.textContent = `${targets[0].connection} · ${targets[0].name}`;
  } else {
    status.textContent = `${live.length} of ${targets.length} instances live`;
  }
  if (lost.length === 0) {
    showBanner(null);
  } else if (targets.length === 1) {
    const [target] = targets;
    const why = target.why ? ` (${target.why})` : '';
    const figures = target.stats ? 'The figures below are the last received.' : 'No figures have come yet.';
    showBanner(`Connection to rampart lost${why}: reconnecting… ${figures}`);
  } else {
    const names = lost.map((t) => (t.why ? `${t.name} (${t.why})` : t.name)).join(', ');
    showBanner(`Connection lost to ${names}: reconnecting… Their figures are the last received.`);
  }
}

function showBanner(text) {
  const banner = document.getElementById('banner');
  banner.hidden = text === null;
  banner.textContent = text ?? '';
}

// === What the events say ===

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

/** Keeps each route's latency percentiles for the sparklines, over the last `HISTORY_MS`. */
function record(target, stats, now) {
  const names = new Set();
  for (const route of stats.routes) {
    names.add(route.name);
    const samples = target.history.get(route.name) ?? [];
    samples.push({ at: now, p50: route.p50_ms, p99: route.p99_ms });
    while (samples.length > 0 && samples[0].at < now - HISTORY_MS) {
      samples.shift();
    }
    target.history.set(route.name, samples);
  }
  for (const name of target.history.keys()) {
    if (!names.has(name)) {
      target.history.delete(name);
    }
  }
}

/** A transition applied to the last stats, so the page shows it before the next stats come. */
function apply(stats, change) {
  const endpoint = stats?.upstreams
    .find((u) => u.name === change.upstream)?.endpoints
    .find((e) => e.address === change.endpoint);
  if (!endpoint) {
    return;
  }
  if (change.kind === 'breaker') {
    endpoint.state = change.to;
  } else if (change.kind === 'health') {
    endpoint.healthy = change.healthy;
  }
}

function describe(change) {
  if (change.kind === 'breaker') {
    return `${change.from} → ${change.to}`;
  }
  return change.healthy ? 'unhealthy → healthy' : 'healthy → unhealthy';
}

// === Rendering ===

function render(target) {
  const stats = target.stats;
  if (!stats) {
    return;
  }
  target.el.classList.add('has-stats');
  const upstreams = new Map(stats.upstreams.map((u) => [u.name, u]));
  sync(target.routes, target.cards, stats.routes, (route) => route.name,
    (route) => newCard(target, route),
    (card, route) => updateCard(target, card, route, upstreams.get(route.upstream)));
  sync(target.upstreams, target.panels, stats.upstreams, (upstream) => upstream.name,
    (upstream) => newPanel(target, upstream),
    updatePanel);
  updateOutbox(target.outbox, stats.outbox);
}

/**
 * Makes `container` hold one view per item, in the items' order: views are kept by key and
 * updated in place (a button is never replaced under the pointer), new ones made, gone ones
 * removed.
 */
function sync(container, views, items, key, make, update) {
  const keep = new Set();
  items.forEach((item, index) => {
    const k = key(item);
    keep.add(k);
    let view = views.get(k);
    if (!view) {
      view = make(item);
      views.set(k, view);
    }
    update(view, item);
    const here = container.children[index] ?? null;
    if (here !== view.el) {
      container.insertBefore(view.el, here);
    }
  });
  for (const [k, view] of views) {
    if (!keep.has(k)) {
      view.el.remove();
      views.delete(k);
    }
  }
}

/** The breaker state a route shows: the most alarming of its upstream's endpoints. */
function routeState(upstream) {
  const states = (upstream?.endpoints ?? []).map((e) => e.state);
  return SEVERITY.find((s) => states.includes(s)) ?? 'unknown';
}

// --- route cards ---

function newCard(target, route) {
  const field = (name) => h('dd', { 'data-field': name }, '–');
  const fields = {
    state: h('span', { class: 'state', 'data-field': 'state' }),
    upstream: h('span', { class: 'via' }),
    endpoints: h('p', { class: 'endpoints-summary', 'data-field': 'endpoints' }),
    rate: field('rate'),
    errors: field('errors'),
    p50: field('p50'),
    p99: field('p99'),
    spark: h('div', { class: 'spark' }),
    caption: h('p', { class: 'caption', 'data-field': 'spark' }),
    totals: h('p', { class: 'totals', 'data-field': 'totals' }),
  };
  const el = h('article', { class: 'card', 'data-route': route.name, 'data-target': target.name },
    h('header', {}, h('h4', { class: 'name' }, route.name), fields.upstream, fields.state),
    fields.endpoints,
    h('dl', { class: 'figures' },
      h('div', {}, h('dt', {}, 'requests/s'), fields.rate),
      h('div', {}, h('dt', {}, 'errors'), fields.errors),
      h('div', {}, h('dt', {}, 'p50'), fields.p50),
      h('div', {}, h('dt', {}, 'p99'), fields.p99)),
    fields.spark,
    fields.caption,
    fields.totals);
  return { el, fields };
}

function updateCard(target, card, route, upstream) {
  const { el, fields } = card;
  const state = routeState(upstream);
  const endpoints = upstream?.endpoints ?? [];
  const unhealthy = endpoints.filter((e) => !e.healthy).length;
  el.dataset.upstream = route.upstream;
  el.dataset.state = state;
  el.dataset.healthy = String(unhealthy === 0);
  fields.upstream.textContent = `→ ${route.upstream}`;
  fields.state.textContent = LABELS[state] ?? state;
  const counts = new Map();
  for (const e of endpoints) {
    counts.set(e.state, (counts.get(e.state) ?? 0) + 1);
  }
  const parts = SEVERITY.filter((s) => counts.has(s)).map((s) => `${counts.get(s)} ${LABELS[s]}`);
  if (unhealthy > 0) {
    parts.push(`${unhealthy} unhealthy`);
  }
  fields.endpoints.textContent = endpoints.length === 0
    ? 'no endpoints'
    : `endpoints: ${parts.join(' · ')}`;
  fields.rate.textContent = number(route.requests_per_second);
  fields.errors.textContent = percent(route.error_rate);
  fields.p50.textContent = ms(route.p50_ms);
  fields.p99.textContent = ms(route.p99_ms);
  const samples = target.history.get(route.name) ?? [];
  const drawn = sparkline(fields.spark, samples);
  fields.caption.textContent = drawn === null
    ? 'p50 and p99: no latency yet'
    : `p50 (thin) and p99 (thick) over the last ${duration(drawn.span)}; top ${ms(drawn.top)}`;
  const r = route.requests ?? {};
  fields.totals.textContent = `since start: ${r.success} ok · ${r.failure} failed · `
    + `${r.fallback} fallback · ${r.rejected} rejected · ${route.retries} retries · `
    + `${route.hedges} hedges`;
}

/**
 * Draws p50 and p99 of `samples` into `box`, over the time they cover (`HISTORY_MS` at most);
 * returns the top of the scale and the span drawn, or `null` with no latency yet.
 */
function sparkline(box, samples) {
  const width = 300;
  const height = 60;
  const values = samples.flatMap((sample) => [sample.p50, sample.p99]).filter((v) => typeof v === 'number');
  let svg = box.firstElementChild;
  if (!svg) {
    svg = svgElement('svg', { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none', role: 'img' },
      svgElement('path', { class: 'p99' }), svgElement('path', { class: 'p50' }));
    box.append(svg);
  }
  if (values.length === 0) {
    svg.querySelector('.p99').setAttribute('d', '');
    svg.querySelector('.p50').setAttribute('d', '');
    svg.setAttribute('aria-label', 'no latency yet');
    return null;
  }
  const top = Math.max(...values);
  const end = samples[samples.length - 1].at;
  // Until the history fills, the samples there are take the whole width.
  const span = Math.max(end - samples[0].at, 1000);
  const line = (key) => {
    let d = '';
    let previous = null;
    for (const sample of samples) {
      const v = sample[key];
      if (typeof v !== 'number') {
        previous = null;
        continue;
      }
      const x = width - ((end - sample.at) / span) * width;
      const y = height - 3 - (top > 0 ? (v / top) * (height - 6) : 0);
      const joined = previous !== null && sample.at - previous <= GAP_MS;
      d += `${joined ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
      previous = sample.at;
    }
    return d;
  };
  svg.querySelector('.p99').setAttribute('d', line('p99'));
  svg.querySelector('.p50').setAttribute('d', line('p50'));
  svg.setAttribute('aria-label', `latency over the last ${duration(span)}, up to ${ms(top)}`);
  return { top, span };
}

// --- upstream panels ---

function newPanel(target, upstream) {
  const fields = {
    load: h('span', { class: 'load', 'data-field': 'load' }),
    endpoints: h('div', { class: 'endpoint-list' }),
    message: h('p', { class: 'message', 'data-role': 'message', hidden: '' }),
  };
  const all = endpointRow('*', 'all endpoints');
  const el = h('section', { class: 'upstream', 'data-upstream': upstream.name, 'data-target': target.name },
    h('header', {}, h('h4', { class: 'name' }, upstream.name), fields.load),
    fields.endpoints,
    all.el,
    fields.message);
  el.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-force]');
    if (!button) {
      return;
    }
    const endpoint = button.closest('[data-endpoint]').dataset.endpoint;
    force(target, upstream.name, endpoint, button.dataset.force, fields.message);
  });
  return { el, fields, rows: new Map() };
}

function updatePanel(panel, upstream) {
  const { fields } = panel;
  fields.load.textContent = `in flight ${upstream.in_flight} of ${upstream.concurrency_limit}`;
  sync(fields.endpoints, panel.rows, upstream.endpoints, (e) => e.address,
    (e) => endpointRow(e.address, e.address),
    updateRow);
}

function endpointRow(address, label) {
  const button = (force, text) => h('button', { type: 'button', 'data-force': force }, text);
  const fields = {
    address: h('span', { class: 'address' }, label),
    state: h('span', { class: 'state', 'data-field': 'state' }),
    health: h('span', { class: 'health', 'data-field': 'health' }),
    numbers: h('span', { class: 'numbers', 'data-field': 'numbers' }),
  };
  const el = h('div', { class: 'endpoint', 'data-endpoint': address },
    fields.address,
    fields.state,
    fields.health,
    fields.numbers,
    h('span', { class: 'buttons' },
      button('open', 'Force open'),
      button('closed', 'Force closed'),
      button('auto', 'Auto')));
  return { el, fields };
}

function updateRow(row, endpoint) {
  const { el, fields } = row;
  el.dataset.state = endpoint.state;
  el.dataset.healthy = String(endpoint.healthy);
  el.dataset.reinstated = String(Boolean(endpoint.reinstated));
  fields.address.textContent = endpoint.backup ? `${endpoint.address} (backup)` : endpoint.address;
  // Ejected, yet taking traffic: the ejection cap (max_ejected_percent) put it back.
  const state = LABELS[endpoint.state] ?? endpoint.state;
  fields.state.textContent = endpoint.reinstated ? `${state} · in service (ejection cap)` : state;
  fields.health.textContent = endpoint.healthy ? 'healthy' : 'unhealthy';
  fields.numbers.textContent = `in flight ${endpoint.in_flight} · `
    + `${number(endpoint.requests_per_second)} req/s · ${percent(endpoint.error_rate)} errors · `
    + `p50 ${ms(endpoint.p50_ms)} · p99 ${ms(endpoint.p99_ms)}`;
}

// --- the outbox of the async routes ---

/** The outbox's panel, shown only while the stats carry an `outbox` (`[outbox]` is set). */
function newOutbox(name) {
  const fields = {
    totals: h('span', { class: 'load', 'data-field': 'totals' }),
    routes: h('div', { class: 'endpoint-list' }),
    error: h('p', { class: 'message', 'data-kind': 'error', hidden: '' }),
  };
  const title = h('h3', { class: 'section-title outbox-title', hidden: '' }, 'Outbox');
  const el = h('section', { class: 'upstream outbox', 'data-target': name, hidden: '' },
    h('header', {}, h('h4', { class: 'name', 'data-field': 'store' }), fields.totals),
    fields.routes,
    fields.error);
  return { title, el, fields, rows: new Map() };
}

function updateOutbox(outbox, summary) {
  const shown = summary !== null && typeof summary === 'object';
  outbox.title.hidden = !shown;
  outbox.el.hidden = !shown;
  if (!shown) {
    return;
  }
  const { fields } = outbox;
  outbox.el.querySelector('[data-field="store"]').textContent = `${summary.store} store`;
  fields.error.hidden = typeof summary.error !== 'string';
  fields.error.textContent = summary.error ?? '';
  const total = summary.total ?? {};
  fields.totals.textContent = typeof summary.error === 'string' ? ''
    : `pending ${summary.pending} · dead ${total.dead} · delivered ${total.delivered}`
      + (summary.dropped > 0 ? ` · dropped ${summary.dropped}` : '');
  const routes = Object.entries(summary.routes ?? {}).map(([route, counts]) => ({ route, ...counts }));
  sync(fields.routes, outbox.rows, routes, (r) => r.route, outboxRow, updateOutboxRow);
}

function outboxRow({ route }) {
  const fields = {
    numbers: h('span', { class: 'numbers', 'data-field': 'numbers' }),
  };
  const el = h('div', { class: 'endpoint', 'data-outbox-route': route },
    h('span', { class: 'address' }, route),
    fields.numbers);
  return { el, fields };
}

function updateOutboxRow(row, counts) {
  row.el.dataset.dead = String(counts.dead > 0);
  row.fields.numbers.textContent = `queued ${counts.queued} · delivering ${counts.delivering} · `
    + `dead ${counts.dead} · delivered ${counts.delivered}`;
}

// --- timeline ---

function addTransition(target, text, change) {
  const at = new Date();
  const where = change.kind === 'connection'
    ? target.name
    : `${change.upstream} / ${change.endpoint}`;
  const prefix = targets.length > 1 && change.kind !== 'connection' ? `${target.name} · ` : '';
  const to = change.kind === 'health' ? (change.healthy ? 'healthy' : 'unhealthy') : change.to;
  const item = h('li', { 'data-kind': change.kind, 'data-to': to, 'data-target': target.name },
    h('time', { datetime: at.toISOString() }, at.toLocaleTimeString()),
    h('span', { class: 'where' }, prefix + where),
    h('span', { class: 'what' }, text));
  if (change.kind !== 'connection') {
    item.dataset.upstream = change.upstream;
    item.dataset.endpoint = change.endpoint;
  }
  const timeline = document.getElementById('timeline');
  timeline.prepend(item);
  while (timeline.children.length > TIMELINE_MAX) {
    timeline.lastElementChild.remove();
  }
}

// === Forcing breakers ===

function tokenKey(target) {
  return `rampart-admin-token ${target.name} ${target.base}`;
}

function storedToken(target) {
  try {
    return sessionStorage.getItem(tokenKey(target));
  } catch {
    return null;
  }
}

function storeToken(target, token) {
  try {
    if (token === null) {
      sessionStorage.removeItem(tokenKey(target));
    } else {
      sessionStorage.setItem(tokenKey(target), token);
    }
  } catch {
    // Storage refused (a private window's quota): the token is asked again next time.
  }
}

/** Asks for `target`'s admin token; `null` when the operator cancels. */
function askToken(target) {
  const dialog = document.getElementById('token-dialog');
  const input = document.getElementById('token-input');
  document.getElementById('token-target').textContent =
    targets.length > 1 ? ` for ${target.name}` : '';
  input.value = '';
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const token = dialog.returnValue === 'send' ? input.value.trim() : '';
      input.value = '';
      resolve(token === '' ? null : token);
    }, { once: true });
  });
}

async function force(target, upstream, endpoint, state, message) {
  const who = endpoint === '*' ? `${upstream}, all endpoints` : `${upstream} / ${endpoint}`;
  let token = storedToken(target);
  if (token === null) {
    token = await askToken(target);
    if (token === null) {
      return;
    }
    storeToken(target, token);
  }
  const which = endpoint === '*' ? '*' : encodeURIComponent(endpoint);
  const path = `/api/breakers/${encodeURIComponent(upstream)}/${which}`;
  say(message, 'pending', `${who}: asking for ${state}…`);
  let response;
  let text;
  try {
    response = await fetch(targetUrl(target, path), {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ state }),
      cache: 'no-store',
    });
    text = await response.text();
  } catch (err) {
    say(message, 'error', `${who}: cannot reach ${target.name} (${err.message})`);
    return;
  }
  const body = parse(text);
  if (response.ok) {
    const states = Array.isArray(body?.states) ? body.states.join(', ') : text;
    say(message, 'ok', `${who}: ${states}`);
    return;
  }
  // A refused token is forgotten, so the next click asks again.
  if (response.status === 401) {
    storeToken(target, null);
  }
  const reason = typeof body?.error === 'string' ? body.error : text;
  say(message, 'error', `${who}: ${response.status} ${response.statusText}: ${reason}`);
}

function say(message, kind, text) {
  message.hidden = false;
  message.dataset.kind = kind;
  message.textContent = text;
}

// === Formatting and DOM helpers ===

function number(v) {
  if (typeof v !== 'number') {
    return '–';
  }
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function duration(milliseconds) {
  const seconds = Math.round(milliseconds / 1000);
  return seconds < 120 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
}

function percent(v) {
  return typeof v === 'number' ? `${(v * 100).toFixed(1)} %` : '–';
}

function ms(v) {
  if (typeof v !== 'number') {
    return '–';
  }
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ms`;
}

/** An HTML element; children are nodes or text (never parsed as HTML). */
function h(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

/** An SVG element. */
function svgElement(tag, attributes, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}
