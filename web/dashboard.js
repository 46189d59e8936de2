// The dashboard: server figures and the stream table from /stats/live (one EventSource, a
// snapshot a second), a live view of one stream that resumes by id across reloads, and a
// publish form. Everything is rendered with textContent: event data is never HTML here.
'use strict';

const HISTORY = 60;          // sparkline points: one a second
const KEPT = 50;             // events shown (and kept across a reload) in the stream view
const rates = new Map();     // stream name -> recent events/s
const rows = new Map();      // stream name -> its <tr>
let previous = null;         // the last snapshot, for rates
let watching = null;         // {stream, controller}

const $ = (id) => document.getElementById(id);

function duration(seconds) {
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function sparkline(points) {
  const svgNs = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(svgNs, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', `0 0 ${HISTORY - 1} 20`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('aria-hidden', 'true');
  const max = Math.max(1, ...points);
  const line = document.createElementNS(svgNs, 'polyline');
  const padded = Array(HISTORY - points.length).fill(0).concat(points);
  line.setAttribute('points', padded.map((v, i) => `${i},${(19 - (v / max) * 18).toFixed(1)}`).join(' '));
  svg.append(line);
  return svg;
}

function row(name) {
  let tr = rows.get(name);
  if (tr) return tr;
  const button = herald.el('button', { class: 'link', type: 'button', text: name });
  button.addEventListener('click', () => watch(name, null));
  tr = herald.el('tr', { 'data-stream': name },
    herald.el('td', {}, button),
    herald.el('td', { class: 'num' }), herald.el('td', { class: 'num' }),
    herald.el('td', { class: 'num' }), herald.el('td', { class: 'num' }),
    herald.el('td'));
  rows.set(name, tr);
  return tr;
}

function render(snapshot) {
  // The first snapshot carries the last minute's rates: the sparklines start from them.
  for (const [name, history] of Object.entries(snapshot.recent ?? {})) {
    if (!rates.has(name)) rates.set(name, history.slice(-HISTORY));
  }
  const seconds = previous ? Math.max(0.001, snapshot.uptime - previous.uptime) : 1;
  const before = new Map((previous?.streams ?? []).map((s) => [s.name, s.published]));
  $('stat-connections').textContent = snapshot.connections;
  // Only the busiest streams come (GET /streams pages through all of them).
  $('stat-streams').textContent = snapshot.streams.length + (snapshot.more_streams ? '+' : '');
  $('more-streams').hidden = !snapshot.more_streams;
  $('stat-uptime').textContent = duration(snapshot.uptime);
  if (previous) {
    $('stat-publish-rate').textContent = Math.round((snapshot.published - previous.published) / seconds);
    $('stat-delivery-rate').textContent = Math.round((snapshot.delivered - previous.delivered) / seconds);
  }
  const body = $('streams');
  const seen = new Set();
  for (const stream of snapshot.streams) {
    seen.add(stream.name);
    const history = rates.get(stream.name) ?? [];
    if (previous) history.push(Math.max(0, (stream.published - (before.get(stream.name) ?? 0)) / seconds));
    rates.set(stream.name, history.slice(-HISTORY));
    const tr = row(stream.name);
    const cells = tr.children;
    // A sealed stream takes no more events: say so next to its name.
    let sealed = cells[0].querySelector('.sealed');
    if (stream.sealed && !sealed) {
      sealed = herald.el('span', { class: 'badge sealed', text: 'closed', title: 'sealed: it takes no more events' });
      cells[0].append(sealed);
    } else if (!stream.sealed && sealed) {
      sealed.remove();
    }
    tr.classList.toggle('sealed', stream.sealed);
    cells[1].textContent = stream.length;
    cells[2].textContent = stream.last_id ?? '–';
    cells[3].textContent = stream.subscribers;
    cells[4].textContent = stream.online;
    const rate = history.length ? history[history.length - 1] : 0;
    cells[5].replaceChildren(sparkline(rates.get(stream.name)),
      herald.el('span', { class: 'hint', text: `${rate.toFixed(rate < 10 ? 1 : 0)} /s` }));
    tr.classList.toggle('selected', watching?.stream === stream.name);
    body.append(tr); // keeps the server's (alphabetical) order
  }
  for (const [name, tr] of rows) {
    if (!seen.has(name)) { tr.remove(); rows.delete(name); rates.delete(name); }
  }
  $('no-streams').hidden = snapshot.streams.length > 0;
  previous = snapshot;
}

function connectStats() {
  const source = new EventSource(herald.withToken('/stats/live'));
  const badge = $('connection');
  source.onopen = () => { badge.textContent = 'live'; badge.classList.add('live'); };
  source.onerror = () => {
    badge.textContent = source.readyState === EventSource.CLOSED ? 'disconnected (reload to retry)' : 'reconnecting…';
    badge.classList.remove('live');
  };
  source.addEventListener('stats', (e) => render(JSON.parse(e.data)));
}

// --- watching one stream -------------------------------------------------------------------
// EventSource only delivers the event types a page names in advance, and a dashboard cannot
// know them: this view reads /sse with fetch and parses the frames itself. Where it starts is
// explicit (last_id), which is also how it resumes after a reload.

function saved() {
  try { return JSON.parse(sessionStorage.getItem('herald-watch') || 'null'); } catch (_) { return null; }
}
function save(stream, lastId, events) {
  sessionStorage.setItem('herald-watch', JSON.stringify({ stream, lastId, events: events.slice(-KEPT) }));
}

function eventItem(event) {
  const meta = `#${event.id}${event.event ? ' · ' + event.event : ''} · ${herald.time(event.time)}`;
  return herald.el('li', { 'data-id': event.id },
    herald.el('div', { class: 'meta', text: meta }),
    herald.el('pre', { text: event.data }));
}

function* frames(buffer) {
  // Frames end with a blank line; herald writes LF only.
  let end;
  while ((end = buffer.text.indexOf('\n\n')) >= 0) {
    const frame = buffer.text.slice(0, end);
    buffer.text = buffer.text.slice(end + 2);
    const fields = { data: [] };
    for (const line of frame.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (name === 'data') fields.data.push(value);
      else fields[name] = value;
    }
    yield { event: fields.event, id: fields.id, data: fields.data.join('\n') };
  }
}

async function watch(stream, resumeFrom) {
  if (watching) watching.controller.abort();
  const controller = new AbortController();
  watching = { stream, controller };
  for (const [name, tr] of rows) tr.classList.toggle('selected', name === stream);
  document.getElementById('publish-stream').value = stream;
  const list = $('events');
  const status = $('watch-status');
  $('watch-title').textContent = `Watching ${stream}`;
  let events = [];
  let lastId = resumeFrom?.lastId ?? null;
  list.replaceChildren();
  if (resumeFrom) {
    events = resumeFrom.events;
    for (const e of events) list.prepend(eventItem(e));
    status.textContent = `Resumed after id ${lastId}: events published while this page was away follow.`;
  } else {
    // A fresh watch starts with the stream's latest events, from history.
    const response = await fetch(`/streams/${encodeURIComponent(stream)}/events?last=10`, { headers: herald.headers() });
    const page = response.ok ? await response.json() : { events: [], next: '0' };
    events = page.events;
    lastId = page.next;
    for (const e of events) list.prepend(eventItem(e));
    status.textContent = `Live from id ${lastId}.`;
  }
  save(stream, lastId, events);
  while (!controller.signal.aborted) {
    try {
      const url = `/sse?stream=${encodeURIComponent(stream)}&envelope=1&last_id=${encodeURIComponent(lastId)}`;
      const response = await fetch(url, { headers: herald.headers({ accept: 'text/event-stream' }), signal: controller.signal });
      if (response.status === 204) { status.textContent = `${stream} is sealed: no more events.`; return; }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        status.textContent = `Cannot watch ${stream}: ${body.error ?? response.status}`;
        status.className = 'status error';
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const buffer = { text: '' };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer.text += value;
        for (const frame of frames(buffer)) {
          if (frame.event === 'close') { status.textContent = `${stream} was closed.`; continue; }
          if (!frame.id || frame.event === 'gap') continue;
          const event = JSON.parse(frame.data);
          events.push(event);
          lastId = event.id;
          list.prepend(eventItem(event));
          while (list.children.length > KEPT) list.lastElementChild.remove();
          save(stream, lastId, events.slice(-KEPT));
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    status.textContent = `Connection lost; resuming after id ${lastId}…`;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// --- publishing ---------------------------------------------------------------------------

function setUpPublish() {
  herald.tokenField($('publish-token'));
  $('publish').addEventListener('submit', async (e) => {
    e.preventDefault();
    const status = $('publish-status');
    const stream = $('publish-stream').value.trim();
    const result = await herald.publish(stream, $('publish-data').value, $('publish-event').value.trim());
    status.className = result.ok ? 'status ok' : 'status error';
    status.textContent = result.ok
      ? `Published to ${result.body.stream} as id ${result.body.id}.`
      : `Not published (${result.status}): ${result.body.error ?? 'unknown error'}`;
    if (result.ok && !watching) watch(stream, null);
  });
}

setUpPublish();
connectStats();
const resume = saved();
if (resume?.stream) watch(resume.stream, resume);
