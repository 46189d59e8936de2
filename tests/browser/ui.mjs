// The web UI in a real Chromium (run by tests/browser.rs): the dashboard, the Live Q&A, the
// htmx page and the timer, each driven as a user would, with a screenshot of each written to
// $HERALD_ARTIFACTS (default: target/ui-screenshots). Any console error — a CSP violation, a
// script error — fails the test.
import { freePort, launchChromium, startHerald } from './lib.mjs';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import assert from 'node:assert/strict';

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const dataDir = mkdtempSync(join(tmpdir(), 'herald-ui-data-'));
const profile = mkdtempSync(join(tmpdir(), 'herald-ui-profile-'));
const artifacts = resolve(process.env.HERALD_ARTIFACTS ?? '../../target/ui-screenshots');
mkdirSync(artifacts, { recursive: true });

async function publish(stream, data, event) {
  const url = `${base}/streams/${encodeURIComponent(stream)}${event ? `?event=${event}` : ''}`;
  const response = await fetch(url, { method: 'POST', body: data });
  assert.equal(response.status, 201, `publish to ${stream}`);
  return (await response.json()).id;
}

const problems = [];
function watchConsole(page, name) {
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`${name}: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`${name}: ${e.message}`));
}

const herald = await startHerald(port, dataDir, ['--demo', '--presence-grace', '1']);
const context = await launchChromium(profile);
try {
  // --- Dashboard -------------------------------------------------------------------------
  const dash = context.pages()[0] ?? (await context.newPage());
  watchConsole(dash, 'dashboard');
  await dash.setViewportSize({ width: 1280, height: 900 });
  await dash.goto(`${base}/`);
  await dash.waitForSelector('#connection.live');
  await publish('news', 'first');
  const newsRow = dash.locator('tr[data-stream="news"]');
  await newsRow.waitFor();
  assert.equal(await newsRow.locator('td').nth(1).textContent(), '1', 'length 1');

  // Watch it, by keyboard: the stream name is a real button.
  await newsRow.getByRole('button', { name: 'news' }).focus();
  await dash.keyboard.press('Enter');
  await dash.waitForSelector('#events li pre:text-is("first")');
  const second = await publish('news', 'second');
  await dash.waitForSelector(`#events li[data-id="${second}"]`);
  const hostile = '<img src=x onerror="document.title=\'pwned\'">';
  await publish('news', hostile);
  await dash.waitForSelector(`#events li pre:text-is(${JSON.stringify(hostile)})`);
  assert.equal(await dash.locator('#events img').count(), 0, 'event data is text, not HTML');

  // Leave, miss two events, come back: the view resumes from the last id it saw.
  await dash.goto('about:blank');
  const missed = [await publish('news', 'while away 1'), await publish('news', 'while away 2')];
  await dash.goto(`${base}/`);
  await dash.waitForSelector(`#events li[data-id="${missed[1]}"]`);
  const shown = await dash.locator('#events li pre').allTextContents();
  assert.deepEqual(shown.slice(0, 5).reverse(), ['first', 'second', hostile, 'while away 1', 'while away 2']);
  assert.match(await dash.locator('#watch-status').textContent(), /Resumed after id \d+/);

  // The publish form.
  await dash.fill('#publish-data', 'from the form');
  await dash.click('#publish button[type=submit]');
  await dash.waitForSelector('#publish-status.ok');
  await dash.waitForSelector('#events li pre:text-is("from the form")');
  await dash.waitForFunction(() => Number(document.getElementById('stat-connections').textContent) >= 2);
  await new Promise((r) => setTimeout(r, 2500)); // a few sparkline points
  // A reload starts the sparkline from the server's last minute, not from a flat line.
  await dash.reload();
  await newsRow.waitFor();
  await dash.waitForFunction(() => {
    const line = document.querySelector('tr[data-stream="news"] polyline');
    return line && line.getAttribute('points').split(' ').some((p) => Number(p.split(',')[1]) < 19);
  });
  // A sealed stream is marked.
  await publish('done', 'the end');
  await fetch(`${base}/streams/done/close`, { method: 'POST' });
  await dash.waitForSelector('tr[data-stream="done"] .badge.sealed');
  await dash.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });
  await dash.emulateMedia({ colorScheme: 'dark' });
  await dash.screenshot({ path: join(artifacts, 'dashboard-dark.png'), fullPage: true });
  await dash.emulateMedia({ colorScheme: 'light' });

  // --- Live Q&A: two pages see each other, presence 1 -> 2 -> 1 ---------------------------
  const alice = await context.newPage();
  watchConsole(alice, 'qa alice');
  await alice.goto(`${base}/demo/qa`);
  await alice.waitForSelector('#here[data-count="1"]');
  const bob = await context.newPage();
  watchConsole(bob, 'qa bob');
  await bob.setViewportSize({ width: 390, height: 800 });
  await bob.goto(`${base}/demo/qa`);
  await bob.waitForSelector('#here[data-count="2"]');
  await alice.waitForSelector('#here[data-count="2"]');
  await alice.fill('#name', 'Alice');
  await alice.fill('#question', 'Can herald replace our Redis?');
  await alice.press('#question', 'Tab');
  await alice.click('#ask button[type=submit]');
  await bob.waitForSelector('#questions li .text:text-is("Can herald replace our Redis?")');
  assert.equal(await bob.locator('#questions li .who').first().textContent(), 'Alice');
  await bob.screenshot({ path: join(artifacts, 'qa-phone.png'), fullPage: true });
  await bob.close();
  await alice.waitForSelector('#here[data-count="1"]', { timeout: 15000 });
  await alice.reload();
  await alice.waitForSelector('#questions li .text:text-is("Can herald replace our Redis?")');
  await alice.setViewportSize({ width: 1280, height: 800 });
  await alice.screenshot({ path: join(artifacts, 'qa.png'), fullPage: true });

  // --- htmx: a server-published fragment is swapped in by the sse extension -----------------
  const hx = await context.newPage();
  watchConsole(hx, 'htmx');
  await hx.setViewportSize({ width: 1280, height: 800 });
  await hx.goto(`${base}/demo/htmx`);
  await hx.waitForFunction(() => window.htmx && document.querySelector('[sse-connect]'));
  // The figures are fetched once the connection is open: this page is a subscriber.
  await hx.waitForFunction(() => document.getElementById('figures').textContent.includes('"subscribers":1'));
  await new Promise((r) => setTimeout(r, 500)); // the extension opens its EventSource on load
  await publish('htmx-demo', '<li id="from-test">hello <b>htmx</b></li>', 'fragment');
  await hx.waitForSelector('#fragments li#from-test b');
  await hx.waitForFunction(() => document.getElementById('figures').textContent.includes('"length":1'));
  await hx.fill('#text', '<script>not run</script> typed text');
  await hx.click('#send button[type=submit]');
  await hx.waitForSelector('#fragments li:has-text("typed text")');
  assert.equal(await hx.locator('#fragments script').count(), 0, 'typed text is escaped');
  await hx.screenshot({ path: join(artifacts, 'htmx.png'), fullPage: true });

  // --- Timer: the built-in publisher (--demo) ticks once a second ----------------------------
  const timer = await context.newPage();
  watchConsole(timer, 'timer');
  await timer.setViewportSize({ width: 1280, height: 800 });
  await timer.goto(`${base}/demo/timer`);
  assert.equal(await timer.locator('#count.waiting').count() + await timer.locator('#count:not(.waiting)').count(), 1);
  await timer.waitForFunction(() => /^\d+$/.test(document.getElementById('count').textContent));
  const first = Number(await timer.locator('#count').textContent());
  await timer.waitForFunction((n) => Number(document.getElementById('count').textContent) > n, first, { timeout: 5000 });
  await timer.screenshot({ path: join(artifacts, 'timer.png'), fullPage: true });

  assert.deepEqual(problems, [], 'no console errors (CSP violations, script errors)');
  console.log(`browser: dashboard, Q&A, htmx and timer work; screenshots in ${artifacts}`);
} finally {
  await context.close();
  herald.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(profile, { recursive: true, force: true });
}
