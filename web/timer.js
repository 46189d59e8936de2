// The timer page: one EventSource, each message's data shown as the count.
'use strict';

const count = document.getElementById('count');
const state = document.getElementById('state');
const source = new EventSource('/sse?stream=timer');
source.onmessage = (e) => {
  count.classList.remove('waiting');
  count.textContent = e.data;
  state.textContent = `last tick: id ${e.lastEventId}`;
};
source.onerror = () => {
  state.textContent = source.readyState === EventSource.CLOSED ? 'stopped' : 'reconnecting…';
};
