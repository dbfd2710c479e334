// Drives the rampart dashboard in headless Chromium, in step with crates/cli/tests/dashboard.rs,
// which runs it as
//
//     node dashboard.mjs ADMIN_URL OUT_DIR FLEET_URL
//
// with the admin token in RAMPART_DASHBOARD_TOKEN and the browser in CHROMIUM (default
// /usr/bin/chromium; playwright-core never downloads one). Each step waits on the page (polling
// the DOM, generous timeouts, no fixed sleeps) for what the Rust side brings about, checks it,
// and prints `step NAME` on stdout for the Rust side to take the next action:
//
//   ready   the route card `api` is CLOSED and live, the outbox panel shows the order the Rust
//           side posted to the async route `orders` delivered
//                                                        -> the upstream starts failing
//   open    the card shows the breaker OPEN              -> the upstream is healthy again
//   forced  the card went CLOSED, a wrong token was refused with the API's words, the force
//           button opened the breaker (FORCED OPEN) and the `*` auto button released it
//                                                        -> rampart is killed
//   lost    the banner says the connection is lost and the cards are greyed
//                                                        -> rampart is started again
//   back    the page reconnected by itself to the new process
//                                                        -> the Rust side takes every event
//                                                           stream place as it frees up
//   full    the page, closed and opened again, finds no place and shows the API's reason
//                                                        -> the Rust side lets them go
//
// Then, on a second page whose `targets.json` is replaced by two instances, `alpha` (this
// rampart) and `beta` (a base where nothing answers), it checks the page groups routes by
// instance and shows each one's connection; and last it opens the fleet view at FLEET_URL
// (`rampart dashboard` over this rampart and an address where nothing answers, both followed
// through its one shared event stream) and checks the same, and exits.
//
// Screenshots go to OUT_DIR at 1366 and 400 px wide. Any failure prints why on stderr, saves
// OUT_DIR/failure.png and exits 1.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [adminUrl, outDir, fleetUrl] = process.argv.slice(2);
const token = process.env.RAMPART_DASHBOARD_TOKEN;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!adminUrl || !outDir || !fleetUrl || !token) {
  console.error('usage: RAMPART_DASHBOARD_TOKEN=... node dashboard.mjs ADMIN_URL OUT_DIR FLEET_URL');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

/** Each wait: far beyond what a step takes (a breaker opens in a second), so only a page that
 * never gets there fails. */
const PATIENCE = 60_000;
const LAPTOP = { width: 1366, height: 900 };
const NARROW = { width: 400, height: 900 };

/** What must not happen on any page: collected as it happens, checked at the end. */
const problems = [];
/** What the pages wrote on the browser's console, for the failure report. */
const consoleLog = [];

const card = (route) => `[data-route="${route}"]`;
const appPanel = '[data-upstream="app"].upstream';
const endpointRow = `${appPanel} .endpoint-list [data-endpoint]`;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
/** The page being driven, for the failure report. */
let current = null;
try {
  const page = await browser.newPage({ viewport: LAPTOP });
  page.setDefaultTimeout(PATIENCE);
  await run(page);
} catch (err) {
  console.error(`dashboard test failed: ${err.stack ?? err}`);
  console.error(`the browser's console:\n${consoleLog.join('\n')}`);
  if (current) {
    await current.screenshot({ path: join(outDir, 'failure.png'), fullPage: true })
      .catch(() => {});
    const html = await current.content().catch(() => '(no page)');
    console.error(`the page at failure:\n${html}`);
  }
  await browser.close();
  process.exit(1);
}
await browser.close();

/**
 * Makes `page` the one driven, and watches it for errors and for requests anywhere but the admin
 * API.
 */
/** Watches `page` for errors and for any request outside `url`'s origin (the server it was
 * opened from). */
function watch(page, url = adminUrl) {
  current = page;
  const origin = new URL(url).origin;
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
  page.on('console', (message) => {
    consoleLog.push(`${message.type()}: ${message.text()}`);
    // A CSP refusal would mean the page tried to load something from elsewhere.
    if (message.text().includes('Content Security Policy')) {
      problems.push(`console: ${message.text()}`);
    }
  });
  page.on('request', (request) => {
    if (new URL(request.url()).origin !== origin) {
      problems.push(`a request outside ${origin}: ${request.url()}`);
    }
  });
  // Every resource the page asks for exists (a browser logs each 404 as an error), but the
  // event streams of an instance the fleet test makes unreachable on purpose, and the page's
  // second ask for one, to learn why it failed.
  page.on('response', (response) => {
    const events = response.request().resourceType() === 'eventsource'
      || new URL(response.url()).pathname.endsWith('/api/events');
    if (response.status() === 404 && !events) {
      problems.push(`404 for ${response.url()}`);
    }
  });
}

async function run(page) {
  watch(page);

  const response = await page.goto(adminUrl);
  check(response.ok(), `GET / answered ${response.status()}`);

  // ready: the page connected and shows both routes, closed.
  await page.locator(`${card('api')}[data-state="closed"]`).waitFor();
  await page.locator(`${card('static')}[data-state="closed"]`).waitFor();
  await page.locator('#status[data-connection="live"]').waitFor();
  check(await page.locator('#banner').isHidden(), 'the banner shows while connected');
  check(await page.locator('.instance').count() === 0, 'one target, yet an instance header');
  await expectText(page, `${card('api')} [data-field="state"]`, /^closed$/);
  // The outbox of the async route `orders`: the order posted before the page opened, delivered.
  await page.locator('.outbox-title').waitFor();
  await expectText(page, '.outbox [data-field="store"]', /^embedded store$/);
  await expectText(page, '.outbox [data-outbox-route="orders"] [data-field="numbers"]',
    /^queued 0 · delivering 0 · dead 0 · delivered 1$/);
  step('ready');

  // open: the upstream fails, the breaker opens, the card says so in colour and size.
  await page.locator(`${card('api')}[data-state="open"]`).waitFor();
  await page.locator(`${endpointRow}[data-state="open"]`).waitFor();
  await page.locator('#timeline li[data-kind="breaker"][data-upstream="app"][data-to="open"]')
    .first().waitFor();
  // Measured while open: the breaker half-opens for a moment at each probe, so this polls until
  // it sees the open card as it should be rather than sampling once.
  await waitFor(page, 'the open card bigger than a closed one, with a thick red border', () => {
    const open = document.querySelector('[data-route="api"]');
    const calm = document.querySelector('[data-route="static"]');
    if (open?.dataset.state !== 'open' || calm?.dataset.state !== 'closed') {
      return false;
    }
    const area = (el) => el.getBoundingClientRect().width * el.getBoundingClientRect().height;
    const style = getComputedStyle(open);
    return area(open) > 1.5 * area(calm)
      && parseFloat(style.borderTopWidth) >= 4
      && style.borderTopColor === 'rgb(198, 40, 40)';
  });
  // The stats count the failures too (the breaker's transition comes before them).
  await expectText(page, `${card('api')} [data-field="errors"]`, /^(?!0\.0 )[\d.]+ %$/);
  await screenshots(page, 'open');
  step('open');

  // closed again once the upstream is healthy.
  await page.locator(`${card('api')}[data-state="closed"]`).waitFor();
  await page.locator('#timeline li[data-kind="breaker"][data-upstream="app"][data-to="closed"]')
    .first().waitFor();
  await page.locator(`${card('api')} .spark path.p99[d^="M"]`).waitFor({ state: 'attached' });
  await screenshots(page, 'closed');

  // A wrong token: refused, and the API's own words are shown.
  const row = page.locator(endpointRow).first();
  await row.locator('button[data-force="open"]').click();
  await page.locator('#token-dialog[open]').waitFor();
  await page.locator('#token-input').fill(`not-${token}`);
  await page.locator('#token-send').click();
  await page.locator(`${appPanel} [data-role="message"][data-kind="error"]`).waitFor();
  await expectText(page, `${appPanel} [data-role="message"]`, /401 .*missing or wrong token/);
  check(await page.locator(card('api')).getAttribute('data-state') === 'closed',
    'a refused call changed the breaker');

  // The right token: forced open; the refused one was forgotten, so it is asked for again.
  await row.locator('button[data-force="open"]').click();
  await page.locator('#token-dialog[open]').waitFor();
  await page.locator('#token-input').fill(token);
  await page.locator('#token-send').click();
  await page.locator(`${card('api')}[data-state="forced-open"]`).waitFor();
  await page.locator(`${endpointRow}[data-state="forced-open"]`).waitFor();
  await expectText(page, `${card('api')} [data-field="state"]`, /^forced open$/);
  await expectText(page, `${appPanel} [data-role="message"]`, /forced-open/);
  await page.locator('#timeline li[data-kind="breaker"][data-to="forced-open"]').first().waitFor();
  await page.screenshot({ path: join(outDir, 'forced-open-1366.png'), fullPage: true });

  // Back to automatic for every endpoint: the token is kept for the tab, no question asked.
  await page.locator(`${appPanel} [data-endpoint="*"] button[data-force="auto"]`).click();
  await page.locator(`${card('api')}[data-state="closed"]`).waitFor();
  check(await page.locator('#token-dialog[open]').count() === 0, 'the token was asked again');
  await expectText(page, `${appPanel} [data-role="message"]`, /all endpoints: closed/);
  step('forced');

  // lost: rampart is killed; the page says so, and greys what it shows.
  await page.locator('#banner').waitFor({ state: 'visible' });
  await page.locator('section.target[data-connection="lost"]').waitFor();
  await expectText(page, '#banner', /lost/i);
  const filter = await page.locator(card('api')).evaluate((el) => getComputedStyle(el).filter);
  check(filter.includes('grayscale'), `a lost instance's card is not greyed: ${filter}`);
  await page.locator('#timeline li[data-kind="connection"][data-to="lost"]').first().waitFor();
  await page.screenshot({ path: join(outDir, 'lost-1366.png'), fullPage: true });
  step('lost');

  // back: a new rampart on the same address; the page reconnects by itself.
  await page.locator('#banner').waitFor({ state: 'hidden' });
  await page.locator('section.target[data-connection="live"]').waitFor();
  await page.locator(`${card('api')}[data-state="closed"]`).waitFor();
  await page.locator('#timeline li[data-kind="connection"][data-to="live"]').first().waitFor();
  await page.screenshot({ path: join(outDir, 'back-1366.png'), fullPage: true });

  step('back');

  // full: the Rust side takes every place but the page's, and the page's once it is closed.
  await page.close();
  await waitForFullStreams();
  const reopened = await browser.newPage({ viewport: LAPTOP });
  reopened.setDefaultTimeout(PATIENCE);
  watch(reopened);
  await reopened.goto(adminUrl);
  await reopened.locator('#banner').waitFor({ state: 'visible' });
  await expectText(reopened, '#banner', /lost \(503: 64 event streams are open already[^)]*\)/);
  await expectText(reopened, '#banner', /No figures have come yet/);
  await reopened.screenshot({ path: join(outDir, 'full-1366.png'), fullPage: true });
  await reopened.close();
  step('full');

  await fleet();
  await fleetView();
  check(problems.length === 0, problems.join('\n'));
  console.log(`screenshots in ${outDir}`);
}

/** The same page over two instances, one of them unreachable. */
async function fleet() {
  const context = await browser.newContext({ viewport: LAPTOP });
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE);
  watch(page);
  await page.route('**/targets.json', (route) => route.fulfill({
    contentType: 'application/json',
    body: JSON.stringify([{ name: 'alpha', base: '.' }, { name: 'beta', base: './nowhere' }]),
  }));
  await page.goto(adminUrl);
  const alpha = page.locator('section.target[data-target="alpha"]');
  const beta = page.locator('section.target[data-target="beta"]');
  await alpha.locator('[data-route="api"][data-state="closed"]').waitFor();
  await page.locator('section.target[data-target="alpha"][data-connection="live"]').waitFor();
  await page.locator('section.target[data-target="beta"][data-connection="lost"]').waitFor();
  await expectText(page, 'section.target[data-target="alpha"] .instance', /alpha\s*live/);
  await expectText(page, 'section.target[data-target="beta"] .instance', /beta\s*lost/);
  // beta's base is on alpha's server, which says there is nothing there.
  await expectText(page, '#banner', /lost to beta \(404: no admin endpoint at \/nowhere\/api\/events\):/);
  check(await beta.locator('[data-route]').count() === 0, 'beta shows routes it never sent');
  await expectText(page, '#status', /1 of 2 instances live/);
  await screenshots(page, 'fleet');
  await context.close();
}

/** Waits until the admin API refuses one more event stream: every place is taken. */
async function waitForFullStreams() {
  const until = Date.now() + PATIENCE;
  while (Date.now() < until) {
    const controller = new AbortController();
    const response = await fetch(`${adminUrl}api/events`, { signal: controller.signal })
      .catch(() => null);
    controller.abort();
    if (response?.status === 503) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error('the event stream places were never all taken');
}

/** `rampart dashboard` over this rampart and a dead address: one stream, one live, one lost. */
async function fleetView() {
  const context = await browser.newContext({ viewport: LAPTOP });
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE);
  watch(page, fleetUrl);
  const streams = [];
  page.on('request', (request) => {
    if (request.resourceType() === 'eventsource') {
      streams.push(new URL(request.url()).pathname);
    }
  });
  await page.goto(fleetUrl);
  const [live, dead] = await page.evaluate(
    async () => (await (await fetch('targets.json')).json()).map((t) => t.name),
  );
  const section = (name) => `section.target[data-target="${name}"]`;
  await page.locator(`${section(live)} [data-route="api"][data-state="closed"]`).waitFor();
  await page.locator(`${section(live)}[data-connection="live"]`).waitFor();
  await page.locator(`${section(dead)}[data-connection="lost"]`).waitFor();
  await expectText(page, '#banner', new RegExp(`lost to ${dead.replaceAll('.', '\\.')}:`));
  await expectText(page, '#status', /1 of 2 instances live/);
  // One event stream for every instance: the page opens no other.
  check(streams.length > 0 && streams.every((path) => path === '/fleet/events'),
    `event streams opened: ${JSON.stringify(streams)}`);
  await screenshots(page, 'fleet-view');
  await context.close();
}

/** The page at both widths, with nothing wider than the screen. */
async function screenshots(page, name) {
  for (const size of [LAPTOP, NARROW]) {
    await page.setViewportSize(size);
    await page.waitForFunction(
      (width) => window.innerWidth === width, size.width, { timeout: PATIENCE },
    );
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    check(overflow <= 0, `at ${size.width} px the page is ${overflow} px too wide`);
    await page.screenshot({ path: join(outDir, `${name}-${size.width}.png`), fullPage: true });
  }
  await page.setViewportSize(LAPTOP);
}

/** Waits until `predicate`, run in the page, holds. */
async function waitFor(page, what, predicate) {
  try {
    await page.waitForFunction(predicate, null, { timeout: PATIENCE, polling: 100 });
  } catch (err) {
    throw new Error(`never saw ${what}: ${err.message}`);
  }
}

/** Waits until the text of `selector` matches `pattern`. */
async function expectText(page, selector, pattern) {
  try {
    await page.waitForFunction(
      ([selector, source, flags]) => new RegExp(source, flags)
        .test(document.querySelector(selector)?.textContent ?? ''),
      [selector, pattern.source, pattern.flags],
      { timeout: PATIENCE, polling: 100 },
    );
  } catch {
    const text = await page.locator(selector).first().textContent().catch(() => null);
    throw new Error(`${selector} never matched ${pattern}; it says ${JSON.stringify(text)}`);
  }
}

function check(condition, what) {
  if (!condition) {
    throw new Error(what);
  }
}

function step(name) {
  console.log(`step ${name}`);
}
