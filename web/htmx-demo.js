// The htmx page's one piece of script: a form that publishes an escaped <li> fragment, the way
// a backend would publish rendered HTML. The swapping itself is htmx's, untouched.
'use strict';

function escapeHtml(text) {
  const span = document.createElement('span');
  span.textContent = text;
  return span.innerHTML;
}

document.getElementById('send').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = document.getElementById('text');
  const fragment = `<li>${escapeHtml(input.value)} <small>${new Date().toLocaleTimeString()}</small></li>`;
  const result = await herald.publish('htmx-demo', fragment, 'fragment');
  const status = document.getElementById('send-status');
  status.className = result.ok ? 'status ok' : 'status error';
  status.textContent = result.ok ? `Published as id ${result.body.id}.` : `Not published (${result.status}): ${result.body.error ?? ''}`;
  if (result.ok) input.value = '';
});
