// Access from a page on another origin, in a real Chromium (run by tests/browser.rs):
// - a listed origin's EventSource with `withCredentials` carries the herald_token cookie, reads
//   a private stream, and its page can publish with fetch + Authorization (a real preflight);
// - an unlisted origin's page gets nothing: its EventSource fails and stays CLOSED;
// - a page with no token gets 401 on the private stream, and its EventSource stops for good.
import { freePort, launchChromium, startHerald } from './lib.mjs';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const SECRET = 'a-browser-test-secret-of-32-bytes!!';
const PUBLISH_TOKEN = 'browser-test-publish-token';

// HS256, as any backend would mint it.
function jwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  const signature = createHmac('sha256', SECRET).update(body).digest('base64url');
  return `${body}.${signature}`;
}

// A page server: the "app" origin. Its one page is blank; the test drives it.
function pageServer(port) {
  const server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>app</title>');
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

const [heraldPort, appPort, evilPort] = [await freePort(), await freePort(), await freePort()];
const herald = `http://127.0.0.1:${heraldPort}`;
const app = `http://127.0.0.1:${appPort}`;
const evil = `http://127.0.0.1:${evilPort}`;
const dataDir = mkdtempSync(join(tmpdir(), 'herald-browser-data-'));
const profile = mkdtempSync(join(tmpdir(), 'herald-browser-profile-'));

const child = await startHerald(heraldPort, dataDir, [
  '--jwt-secret', SECRET,
  '--publish-token', PUBLISH_TOKEN,
  '--private', 'user:*',
  '--cors-origin', app,
]);
const servers = [await pageServer(appPort), await pageServer(evilPort)];
const context = await launchChromium(profile);

async function publish(stream, data) {
  const response = await fetch(`${herald}/streams/${stream}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${PUBLISH_TOKEN}` },
    body: data,
  });
  assert.equal(response.status, 201);
  return (await response.json()).id;
}

// Opens an EventSource in the page and records what happens to it.
function listen(page, url) {
  return page.evaluate((url) => {
    window.got = [];
    window.errors = 0;
    window.opens = 0;
    window.source = new EventSource(url, { withCredentials: true });
    window.source.onopen = () => { window.opens += 1; };
    window.source.onerror = () => { window.errors += 1; };
    window.source.onmessage = (e) => window.got.push(e.data);
  }, url);
}

try {
  // Cookies belong to a host, not a port: set for herald, they are sent from the app's pages.
  const token = jwt({ sub: 'alice', subscribe: ['user:alice'], exp: Math.floor(Date.now() / 1000) + 600 });
  await context.addCookies([{ name: 'herald_token', value: token, url: herald }]);
  const first = await publish('user:alice', 'for alice only');

  // The listed origin reads the private stream with its cookie.
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`${app}/`);
  await listen(page, `${herald}/sse?stream=user:alice&last_id=0`);
  await page.waitForFunction(() => window.got.length === 1, null, { timeout: 15000 });
  await publish('user:alice', 'live, too');
  await page.waitForFunction(() => window.got.length === 2, null, { timeout: 15000 });
  assert.deepEqual(await page.evaluate(() => window.got), ['for alice only', 'live, too']);
  const online = await (await fetch(`${herald}/streams/user:alice/presence`, {
    headers: { authorization: `Bearer ${PUBLISH_TOKEN}` },
  })).json();
  assert.deepEqual(online.clients.map((c) => c.client), ['alice'], 'sub is the presence id');

  // Its page may publish with a token in Authorization: the preflight is answered.
  const publisher = jwt({ publish: ['user:alice'] });
  const published = await page.evaluate(async ({ herald, publisher }) => {
    const r = await fetch(`${herald}/streams/user:alice`, {
      method: 'POST',
      headers: { authorization: `Bearer ${publisher}`, 'content-type': 'application/json' },
      body: JSON.stringify({ data: 'from the page' }),
    });
    return { status: r.status, body: await r.json() };
  }, { herald, publisher });
  assert.equal(published.status, 201);
  await page.waitForFunction(() => window.got.length === 3, null, { timeout: 15000 });

  // An unlisted origin, same cookie: the browser itself refuses the response.
  const other = await context.newPage();
  await other.goto(`${evil}/`);
  await listen(other, `${herald}/sse?stream=user:alice&last_id=0`);
  await other.waitForFunction(() => window.source.readyState === EventSource.CLOSED, null, {
    timeout: 15000,
  });
  const stolen = await other.evaluate(async (herald) => {
    try {
      const r = await fetch(`${herald}/streams/user:alice/events`, { credentials: 'include' });
      return `read ${r.status}`;
    } catch (e) {
      return 'blocked';
    }
  }, herald);
  assert.equal(stolen, 'blocked');
  assert.deepEqual(await other.evaluate(() => window.got), []);

  // No token at all: 401, and EventSource stops for good instead of reconnecting forever.
  await context.clearCookies();
  const anonymous = await context.newPage();
  await anonymous.goto(`${app}/`);
  await listen(anonymous, `${herald}/sse?stream=user:alice&last_id=0`);
  await anonymous.waitForFunction(() => window.source.readyState === EventSource.CLOSED, null, {
    timeout: 15000,
  });
  await new Promise((r) => setTimeout(r, 4000));
  assert.deepEqual(
    await anonymous.evaluate(() => ({ state: window.source.readyState, opens: window.opens, got: window.got })),
    { state: 2, opens: 0, got: [] },
  );
  console.log(`browser: cookie + withCredentials read ${first}.., unlisted origin blocked, 401 stopped for good`);
} finally {
  await context.close();
  for (const s of servers) s.close();
  child.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(profile, { recursive: true, force: true });
}
