// The chatd demo page: sign in, open chats, send and receive live over STOMP, typing, ticks,
// unread badges, peers' presence dots and history scrolling. Plain browser JS on @stomp/stompjs (window.StompJs)
// and sockjs-client (window.SockJS), both served by chatd; no build step.
//
// Connection: SockJS at /ws when the server answers /ws/info (it then falls back to HTTP
// streaming or polling where WebSockets are blocked), else a plain WebSocket at /ws.
// URL parameters: ?transport=websocket forces the plain WebSocket; ?transports=a,b limits
// SockJS to those transports (e.g. xhr-streaming); ?page=N sets the history page size.
//
// The DOM carries data-* attributes (data-state, data-status, data-unread, data-seq...) that
// show the state at a glance and that the browser test reads.
//
// Modules: demo-common.js (state, helpers), demo-sessions.js (list, badges), demo-chat.js
// (the open chat); this one signs in, connects and wires the forms.
import {
  $, TYPING_EVERY_MS, hooks, params, publish, showError, state,
} from './demo-common.js';
import {
  loadOlder, markSeen, onChatMessage, onReceipt, onSendError, openByEmail, sendMessage,
  showE2eInfo, subscribeTopic,
} from './demo-chat.js';
import { available as e2eAvailable, ensureOwnKey, onKeyChange } from './demo-e2e.js';
import { markAllDelivered, onPresence, refreshSessions, renderTotal } from './demo-sessions.js';

// -- sign in ---------------------------------------------------------------------------

async function signInWithEmail(email) {
  const res = await fetch('/demo/token', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email }),
  });
  const data = await res.json().catch(() => null);
  if (res.status === 404) {
    $('token-box').open = true;
    throw new Error('this server does not mint demo tokens: paste a token below');
  }
  if (!res.ok) throw new Error(data?.errorMsg || `HTTP ${res.status}`);
  start(data.token, data.email);
}

// `email` is known when the server minted the token; otherwise CONNECTED tells it.
function start(token, email = null) {
  resetView();
  state.token = token;
  state.email = email;
  window.sessionStorage.setItem('chatd.token', token);
  $('sign-in').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = false;
  connect().catch(err => setConnection('offline', err.message));
}

// Nothing of a previous user stays on screen (signing in again after a refused token).
function resetView() {
  state.client?.deactivate();
  state.client = null;
  state.open = null;
  state.sessions.clear();
  state.sessionItems.clear();
  state.presence.clear();
  state.total = 0;
  renderTotal();
  $('sessions').replaceChildren();
  $('messages').replaceChildren();
  $('chat').dataset.session = '';
  $('chat-title').textContent = 'Open a chat on the left';
  $('typing').textContent = '';
  $('text').disabled = true;
  $('send-form').querySelector('button').disabled = true;
  showError('chat-error', '');
  showError('sign-in-error', '');
}

// The token expired or was refused: back to the sign-in form, saying why.
function signedOut(reason) {
  window.sessionStorage.removeItem('chatd.token');
  state.client?.deactivate();
  state.token = null;
  $('app').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  showError('sign-in-error', `${reason}: sign in again`);
}

function signOut() {
  window.sessionStorage.removeItem('chatd.token');
  state.client?.deactivate();
  window.location.reload();
}

// -- connection ------------------------------------------------------------------------

function setConnection(stateName, detail) {
  const node = $('connection');
  node.dataset.state = stateName;
  node.textContent = detail ? `${stateName} (${detail})` : stateName;
}

async function sockjsServed() {
  if (params.get('transport') === 'websocket' || typeof window.SockJS !== 'function') {
    return false;
  }
  try {
    const res = await fetch('/ws/info', { cache: 'no-store' });
    return res.ok;
  } catch {
    return false;
  }
}

async function connect() {
  setConnection('connecting');
  const useSockJS = await sockjsServed();
  if (!useSockJS && typeof window.WebSocket !== 'function') {
    throw new Error('no WebSocket in this browser and no SockJS on the server');
  }
  const client = new window.StompJs.Client({
    connectHeaders: { Authorization: `Bearer ${state.token}` },
    reconnectDelay: 2000,
    heartbeatIncoming: 10000,
    heartbeatOutgoing: 10000,
    debug: () => {},
  });
  if (useSockJS) {
    const transports = params.get('transports');
    const options = transports ? { transports: transports.split(',') } : {};
    client.webSocketFactory = () => {
      state.sock = new window.SockJS('/ws', null, options);
      return state.sock;
    };
  } else {
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    client.brokerURL = `${scheme}://${window.location.host}/ws`;
  }
  client.onConnect = frame => onConnected(frame, useSockJS);
  client.onStompError = frame => {
    setConnection('offline', frame.headers.message);
    if (frame.headers.message === 'unauthenticated') signedOut('the server refused the token');
  };
  client.onWebSocketClose = () => {
    if ($('connection').dataset.state === 'connected') setConnection('connecting', 'reconnecting');
  };
  state.client = client;
  client.activate();
}

function onConnected(frame, useSockJS) {
  state.email = frame.headers['user-name'] || state.email;
  $('me').textContent = state.email;
  const node = $('connection');
  node.dataset.connects = String(Number(node.dataset.connects ?? 0) + 1);
  const transport = useSockJS ? `sockjs ${state.sock?.transport ?? '?'}` : 'websocket';
  $('connection').dataset.transport = useSockJS ? (state.sock?.transport ?? '') : 'raw-websocket';
  setConnection('connected', transport);
  const c = state.client;
  c.subscribe('/user/queue/messages', m => onChatMessage(JSON.parse(m.body)));
  c.subscribe('/user/queue/receipts', m => onReceipt(JSON.parse(m.body)));
  c.subscribe('/user/queue/ack', m => onChatMessage(JSON.parse(m.body)));
  c.subscribe('/user/queue/error', m => onSendError(JSON.parse(m.body)));
  c.subscribe('/user/queue/presence', m => onPresence(JSON.parse(m.body)));
  c.subscribe('/user/queue/keys', m => onKeys(JSON.parse(m.body)));
  setUpEncryption();
  if (state.open) subscribeTopic(state.open);
  refreshSessions().then(markAllDelivered).catch(err => showError('chat-error', err.message));
}

// -- end-to-end encryption -------------------------------------------------------------

// The key pair is made (first use) and published on every connect, so peers can start an
// encrypted chat; #me carries its id once it is published.
function setUpEncryption() {
  if (!e2eAvailable()) {
    $('encrypted').disabled = true;
    $('encrypted-option').title = 'encryption needs WebCrypto (HTTPS or localhost)';
    return;
  }
  ensureOwnKey()
    .then(own => { $('me').dataset.kid = own.kid; })
    .catch(err => showError('chat-error', `encryption keys: ${err.message}`));
}

function onKeys(event) {
  if (onKeyChange(event) && state.open?.peer === event.email) showE2eInfo(state.open);
}

// -- wiring ----------------------------------------------------------------------------

$('sign-in-form').addEventListener('submit', event => {
  event.preventDefault();
  showError('sign-in-error', '');
  signInWithEmail($('email').value.trim()).catch(err => showError('sign-in-error', err.message));
});

$('token-form').addEventListener('submit', event => {
  event.preventDefault();
  const token = $('token-input').value.trim();
  if (token) start(token);
});

$('sign-out').addEventListener('click', signOut);

$('open-form').addEventListener('submit', event => {
  event.preventDefault();
  showError('chat-error', '');
  openByEmail($('peer-email').value.trim(), $('intent').value.trim(), $('encrypted').checked)
    .catch(err => showError('chat-error', err.message));
});

$('send-form').addEventListener('submit', event => {
  event.preventDefault();
  const content = $('text').value;
  if (!state.open || !content.trim()) return;
  showError('chat-error', '');
  $('text').value = '';
  state.lastTypingSent = 0;
  sendMessage(content).catch(err => showError('chat-error', err.message));
});

$('text').addEventListener('input', () => {
  const now = Date.now();
  if (!state.open || !$('text').value || now - state.lastTypingSent < TYPING_EVERY_MS) return;
  state.lastTypingSent = now;
  try {
    publish('/app/chat.typing', { sessionId: state.open.id });
  } catch { /* typing is best effort */ }
});

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && state.open) markSeen(state.open);
});

$('messages').addEventListener('scroll', () => {
  const chat = state.open;
  if (chat && $('messages').scrollTop < 40) {
    loadOlder(chat).catch(err => showError('chat-error', err.message));
  }
});

hooks.unauthorized = signedOut;
const saved = window.sessionStorage.getItem('chatd.token');
if (saved) start(saved);
