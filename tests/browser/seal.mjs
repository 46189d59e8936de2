// The seed blog's endless-reconnect problem, solved on the server (run by tests/browser.rs):
// a plain EventSource, with no client code for closing, stops for good once herald seals its
// stream. Sealing ends the response; the browser reconnects once with Last-Event-ID, gets
// `204 No Content`, and goes to readyState CLOSED — and stays there.
import { freePort, launchChromium, startHerald } from './lib.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const dataDir = mkdtempSync(join(tmpdir(), 'herald-browser-data-'));
const profile = mkdtempSync(join(tmpdir(), 'herald-browser-profile-'));

async function publish(data) {
  const response = await fetch(`${base}/streams/timer`, { method: 'POST', body: data });
  assert.equal(response.status, 201);
  return (await response.json()).id;
}

const herald = await startHerald(port, dataDir);
const context = await launchChromium(profile);
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`${base}/healthz`);
  await page.evaluate(() => {
    window.got = [];
    window.closes = [];
    window.opens = 0;
    window.errors = 0;
    window.source = new EventSource('/sse?stream=timer');
    window.source.onopen = () => { window.opens += 1; };
    window.source.onerror = () => { window.errors += 1; };
    window.source.onmessage = (e) => window.got.push({ id: e.lastEventId, data: e.data });
    window.source.addEventListener('close', (e) => window.closes.push(e.data));
  });
  await page.waitForFunction(() => window.opens === 1);
  const ids = [await publish('3'), await publish('2'), await publish('1')];
  await page.waitForFunction(() => window.got.length === 3, null, { timeout: 15000 });

  const sealed = await fetch(`${base}/streams/timer/close`, { method: 'POST' });
  assert.equal(sealed.status, 200);
  assert.equal((await sealed.json()).sealed, true);

  // The browser is told, its response ends, it retries once (3 s) and gets 204: CLOSED.
  await page.waitForFunction(() => window.source.readyState === EventSource.CLOSED, null, {
    timeout: 20000,
  });
  const state = await page.evaluate(() => ({
    got: window.got, closes: window.closes, opens: window.opens,
  }));
  assert.deepEqual(state.got.map((e) => e.id), ids);
  assert.deepEqual(state.closes, ['timer']);
  assert.equal(state.opens, 1, 'the 204 reconnect never opened');

  // And it stays closed: nothing reconnects, even after a few retry periods.
  await new Promise((r) => setTimeout(r, 7000));
  const after = await page.evaluate(() => ({
    state: window.source.readyState, opens: window.opens,
  }));
  assert.deepEqual(after, { state: 2, opens: 1 });
  const { subscribers } = await (await fetch(`${base}/streams/timer`)).json();
  assert.equal(subscribers, 0);
  console.log('browser: EventSource reached CLOSED after the seal and stayed there');
} finally {
  await context.close();
  herald.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(profile, { recursive: true, force: true });
}
