// A real browser's EventSource against a real herald (run by tests/browser.rs):
// 1. it gets back exactly the data that was published (line endings normalised to LF), however
//    hostile the data;
// 2. after herald is killed with SIGKILL and started again on the same port and data directory,
//    the browser reconnects by itself with Last-Event-ID and receives exactly what it missed —
//    including events published while it was disconnected — with no duplicate.
import { freePort, launchChromium, startHerald, stopped } from './lib.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const dataDir = mkdtempSync(join(tmpdir(), 'herald-browser-data-'));
const profile = mkdtempSync(join(tmpdir(), 'herald-browser-profile-'));

async function publish(data) {
  const response = await fetch(`${base}/streams/browser`, { method: 'POST', body: data });
  assert.equal(response.status, 201);
  return (await response.json()).id;
}

let herald = await startHerald(port, dataDir);
const context = await launchChromium(profile);
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`${base}/healthz`); // any same-origin page will do
  await page.evaluate(() => {
    window.got = [];
    window.opens = 0;
    const source = new EventSource('/sse?stream=browser&last_id=0');
    source.onopen = () => { window.opens += 1; };
    source.onmessage = (e) => window.got.push({ id: e.lastEventId, data: e.data });
  });
  await page.waitForFunction(() => window.opens === 1);

  const cases = [
    'plain',
    'two\nlines',
    'windows\r\nline end',
    'old mac\rline end',
    '\n\nid: 999\nevent: forged\ndata: evil\n\n',
    'trailing newline\n',
    '',
    'ünïcödé ✓ 🚀',
    '<img src=x onerror=alert(1)>',
  ];
  const ids = [];
  for (const data of cases) ids.push(await publish(data));
  await page.waitForFunction((n) => window.got.length >= n, cases.length, { timeout: 15000 });
  let got = await page.evaluate(() => window.got);
  assert.deepEqual(
    got.map((e) => e.data),
    cases.map((d) => d.replace(/\r\n/g, '\n').replace(/\r/g, '\n')),
  );
  assert.deepEqual(got.map((e) => e.id), ids);

  // Crash: no goodbye frame, the browser just sees the connection drop.
  const exited = stopped(herald);
  herald.kill('SIGKILL');
  await exited;
  // While herald is down nothing can be published; on restart, publish at once — before the
  // browser's reconnect (its retry is 3 s) — so these must come from the log on resume.
  herald = await startHerald(port, dataDir);
  const missed = [await publish('missed while away 1'), await publish('missed while away 2')];
  await page.waitForFunction(() => window.opens >= 2, null, { timeout: 20000 });
  const live = await publish('live after reconnect');
  const total = cases.length + 3;
  await page.waitForFunction((n) => window.got.length >= n, total, { timeout: 15000 });
  await new Promise((r) => setTimeout(r, 300)); // room for a duplicate to show up, if any
  got = await page.evaluate(() => window.got);
  assert.deepEqual(got.map((e) => e.id), [...ids, ...missed, live], 'every event once, in order');
  assert.ok(BigInt(missed[0]) > BigInt(ids.at(-1)), 'ids rise across the crash');
  console.log(`browser: ${got.length} events, reconnected by itself after kill -9, nothing lost or repeated`);
} finally {
  await context.close();
  herald.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(profile, { recursive: true, force: true });
}
