// Live Q&A on herald alone: history for the latest questions, one EventSource for new ones and
// for presence (join/leave frames), and a POST per question. Each tab is one person: its client
// id lives in sessionStorage, which survives a reload (within herald's presence grace, a reload
// is neither a leave nor a join).
'use strict';

const STREAM = 'realtime-qa:common';
const $ = (id) => document.getElementById(id);

function clientId() {
  let id = sessionStorage.getItem('herald-qa-client');
  if (!id) {
    id = 'guest-' + crypto.randomUUID().slice(0, 8);
    sessionStorage.setItem('herald-qa-client', id);
  }
  return id;
}

function show(event) {
  let question;
  try { question = JSON.parse(event.data); } catch (_) { return; }
  if (typeof question !== 'object' || question === null) return;
  const item = herald.el('li', { 'data-id': event.id },
    herald.el('div', { class: 'meta' },
      herald.el('span', { class: 'who', text: String(question.name ?? 'someone') }),
      ` · ${herald.time(event.time ?? Date.now())}`),
    herald.el('p', { class: 'text', text: String(question.question ?? '') }));
  $('questions').prepend(item);
  $('no-questions').hidden = true;
}

function here(count) {
  $('here').textContent = count === 1 ? '1 person here' : `${count} people here`;
  $('here').dataset.count = count;
  $('here').classList.add('live');
}

async function start() {
  const path = '/streams/' + encodeURIComponent(STREAM);
  const response = await fetch(`${path}/events?last=20`, { headers: herald.headers() });
  const page = response.ok ? await response.json() : { events: [], next: '0' };
  for (const event of page.events) show(event);
  const url = `/sse?stream=${encodeURIComponent(STREAM)}&client=${encodeURIComponent(clientId())}`
    + `&presence=1&last_id=${encodeURIComponent(page.next)}`;
  const source = new EventSource(herald.withToken(url));
  source.addEventListener('question', (e) => show({ id: e.lastEventId, data: e.data }));
  for (const change of ['join', 'leave']) {
    source.addEventListener(change, (e) => here(JSON.parse(e.data).count));
  }
  source.onopen = async () => {
    const presence = await fetch(`${path}/presence`, { headers: herald.headers() });
    if (presence.ok) here((await presence.json()).count);
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) $('here').textContent = 'disconnected';
  };
}

function setUpForm() {
  herald.tokenField($('token'));
  $('name').value = localStorage.getItem('herald-qa-name') ?? '';
  $('ask').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = $('name').value.trim();
    const question = $('question').value.trim();
    if (!name || !question) return;
    localStorage.setItem('herald-qa-name', name);
    const result = await herald.publish(STREAM, { name, question }, 'question');
    const status = $('ask-status');
    status.className = result.ok ? 'status ok' : 'status error';
    status.textContent = result.ok ? 'Asked.' : `Not sent (${result.status}): ${result.body.error ?? 'unknown error'}`;
    if (result.ok) $('question').value = '';
  });
}

setUpForm();
start();
