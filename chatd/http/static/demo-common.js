// Shared by the demo page's modules: the one state object, DOM and REST/STOMP helpers.
export const params = new URLSearchParams(window.location.search);
export const PAGE = Math.max(1, Math.min(200, Number(params.get('page')) || 20));
export const TYPING_EVERY_MS = 2000;
export const TYPING_SHOWN_MS = 3500;
export const $ = id => document.getElementById(id);

// Set by demo.js: what to do when the server says the token is no good (401).
export const hooks = { unauthorized: () => {} };

export const state = {
  token: null,
  email: null,
  client: null,
  sock: null,
  sessions: new Map(),   // sessionId -> session JSON (+ lastMessage, unreadCount)
  sessionItems: new Map(),  // sessionId -> its <li> in the session list
  presence: new Map(),   // peer email -> {online, lastSeen} (session list, /user/queue/presence)
  open: null,            // the open chat: {id, peer, sub, bySeq: Map, oldest, newest, ...}
  total: 0,              // unread messages over all sessions (GET /api/chat/unread)
  unreadTimer: null,
  lastTypingSent: 0,
  typingTimer: null,
};

// -- helpers ---------------------------------------------------------------------------

export function uuid() {
  if (window.crypto?.randomUUID) return window.crypto.randomUUID();
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map(x => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;  // never innerHTML: contents are user text
  return node;
}

export function showError(where, message) {
  $(where).textContent = message || '';
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => null);
  if (res.status === 401) hooks.unauthorized(data?.errorMsg || 'not signed in');
  if (!res.ok) throw new Error(data?.errorMsg || `${method} ${path}: HTTP ${res.status}`);
  return data;
}

export function publish(destination, payload) {
  if (!state.client?.connected) throw new Error('not connected: wait for the connection');
  state.client.publish({
    destination, body: JSON.stringify(payload), headers: { 'content-type': 'application/json' },
  });
}

export function peerOf(session) {
  const other = session.participants.find(p => p.email !== state.email);
  return (other ?? session.participants[0]).email;
}
