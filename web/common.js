// Shared by herald's pages: building DOM without ever parsing event data as HTML, and the
// optional token (a publish token or a JWT) that a protected herald asks for.
'use strict';

const herald = {
  // An element with text content only: event data never becomes markup.
  el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === 'text') node.textContent = value;
      else if (key === 'class') node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  },

  // The token typed into a page, kept for this tab only.
  token() {
    return sessionStorage.getItem('herald-token') || '';
  },
  setToken(value) {
    if (value) sessionStorage.setItem('herald-token', value);
    else sessionStorage.removeItem('herald-token');
  },

  // EventSource cannot send headers: a token goes in the query (or the herald_token cookie).
  withToken(url) {
    const token = herald.token();
    if (!token) return url;
    return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
  },
  headers(extra = {}) {
    const token = herald.token();
    return token ? { ...extra, authorization: 'Bearer ' + token } : extra;
  },

  // POST one event; resolves to {ok, status, body}.
  async publish(stream, data, event) {
    const url = '/streams/' + encodeURIComponent(stream);
    const payload = { data };
    if (event) payload.event = event;
    const response = await fetch(url, {
      method: 'POST',
      headers: herald.headers({ 'content-type': 'application/json' }),
      body: JSON.stringify(payload),
    });
    let body = {};
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    return { ok: response.ok, status: response.status, body };
  },

  time(ms) {
    return new Date(ms).toLocaleTimeString();
  },

  // Wires a page's token field (if it has one) to the stored token.
  tokenField(input) {
    if (!input) return;
    input.value = herald.token();
    input.addEventListener('change', () => herald.setToken(input.value.trim()));
  },
};
