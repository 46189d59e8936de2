// The seed blog's last pitfall, in a real Chromium (run by tests/browser.rs): over HTTP/1.1 a
// browser opens at most six connections to an origin, so a seventh EventSource hangs. Over
// HTTPS herald speaks HTTP/2, and ten EventSources share one connection, all receiving events.
import { freePort, launchChromium, startHerald } from './lib.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const cert = process.env.TEST_TLS_CERT;
const key = process.env.TEST_TLS_KEY;
assert.ok(cert && key, 'TEST_TLS_CERT and TEST_TLS_KEY must name a certificate and key');

const tlsPort = await freePort();
let plainPort = await freePort();
while (plainPort === tlsPort) plainPort = await freePort();
const dirs = [1, 2, 3].map((n) => mkdtempSync(join(tmpdir(), `herald-h2-${n}-`)));
const tls = await startHerald(tlsPort, dirs[0], ['--tls-cert', cert, '--tls-key', key]);
const plain = await startHerald(plainPort, dirs[1]);
const context = await launchChromium(dirs[2], ['--ignore-certificate-errors']);

// Opens n EventSources on the page's own origin; counts opens and messages per source.
function openSources(page, n) {
  return page.evaluate((n) => {
    window.opened = Array(n).fill(false);
    window.got = Array(n).fill(0);
    window.sources = [];
    for (let i = 0; i < n; i++) {
      const source = new EventSource('/sse?stream=tabs');
      source.onopen = () => { window.opened[i] = true; };
      source.onmessage = () => { window.got[i] += 1; };
      window.sources.push(source);
    }
  }, n);
}

try {
  const page = context.pages()[0] ?? (await context.newPage());

  // HTTP/1.1, the contrast: six open, the rest wait for a free connection.
  await page.goto(`http://127.0.0.1:${plainPort}/healthz`);
  await openSources(page, 10);
  await new Promise((r) => setTimeout(r, 3000));
  const openOnH1 = await page.evaluate(() => window.opened.filter(Boolean).length);
  assert.equal(openOnH1, 6, 'HTTP/1.1 allows six connections per origin');
  await page.evaluate(() => window.sources.forEach((s) => s.close()));
  // HTTP/2 over TLS: all ten open and all ten get the event.
  await page.goto(`https://127.0.0.1:${tlsPort}/healthz`);
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(protocol, 'h2');
  await openSources(page, 10);
  await page.waitForFunction(() => window.opened.every(Boolean), null, { timeout: 10000 });
  const status = await page.evaluate(async () =>
    (await fetch('/streams/tabs', { method: 'POST', body: 'to every tab' })).status);
  assert.equal(status, 201);
  await page.waitForFunction(() => window.got.every((n) => n === 1), null, { timeout: 10000 });
  const metrics = await page.evaluate(async () => (await fetch('/metrics')).text());
  const subscriptions = Number(/^herald_subscriptions (\d+)/m.exec(metrics)[1]);
  assert.equal(subscriptions, 10);
  await page.evaluate(() => window.sources.forEach((s) => s.close()));

  console.log('browser: 10 EventSources over one HTTP/2 connection; HTTP/1.1 stalled at 6');
} finally {
  await context.close();
  tls.kill('SIGKILL');
  plain.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}
