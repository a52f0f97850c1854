// The session list: one entry per chat with its peer's presence dot, last message and unread
// badge, and the total.
import { $, api, el, peerOf, publish, showError, state } from './demo-common.js';
import { openChat } from './demo-chat.js';

// -- sessions and unread badges --------------------------------------------------------

export async function refreshSessions() {
  const data = await api('GET', '/api/chat/sessions?limit=100');
  for (const entry of data.sessions) {
    state.sessions.set(entry.sessionId, entry);
    for (const p of entry.participants) {
      // the list is older than live updates already received: never let it overwrite them
      if ('online' in p && !state.presence.has(p.email)) state.presence.set(p.email, p);
    }
  }
  renderSessions();
  scheduleUnread(0);
}

// What arrived while this user was away has now reached a device of theirs.
export function markAllDelivered() {
  for (const s of state.sessions.values()) {
    const last = s.lastMessage;
    if (last && last.senderEmail !== state.email && !last.delivered) {
      publish('/app/chat.delivered', { sessionId: s.sessionId, upToSeq: last.seq });
    }
  }
}

// A presence update (snapshot or live) from /user/queue/presence: the dot of every chat
// with that peer changes at once.
export function onPresence(update) {
  state.presence.set(update.email, { online: update.online, lastSeen: update.lastSeen });
  renderSessions();
}

export function scheduleUnread(delay = 150) {
  clearTimeout(state.unreadTimer);
  state.unreadTimer = setTimeout(() => {
    refreshUnread().catch(err => showError('chat-error', err.message));
  }, delay);
}

export async function refreshUnread() {
  const data = await api('GET', '/api/chat/unread');
  const counts = new Map(data.sessions.map(s => [s.sessionId, s.count]));
  for (const s of state.sessions.values()) {
    s.unreadCount = counts.get(s.sessionId) ?? 0;
  }
  state.total = data.total;
  renderSessions();
}

export function renderTotal() {
  const total = $('total-unread');
  total.dataset.unread = String(state.total);
  total.textContent = String(state.total);
  total.hidden = state.total === 0;
  document.title = state.total ? `(${state.total}) chatd demo` : 'chatd demo';
}

// One <li> per session, kept across renders (a click must not land on a replaced node);
// nodes move only when the order changes.
export function renderSessions() {
  renderTotal();
  const list = $('sessions');
  const ordered = [...state.sessions.values()].sort((a, b) =>
    (b.lastMessage?.sentAt ?? b.createdAt).localeCompare(a.lastMessage?.sentAt ?? a.createdAt));
  ordered.forEach((s, index) => {
    const li = sessionItem(s);
    const peer = peerOf(s);
    li.dataset.peer = peer;
    li.classList.toggle('open', state.open?.id === s.sessionId);
    li.dataset.encrypted = String(Boolean(s.encrypted));
    li.querySelector('.peer').textContent = `${s.encrypted ? '🔒 ' : ''}${peer} · ${s.intent}`;
    const seen = state.presence.get(peer);
    const dot = li.querySelector('.dot');
    dot.dataset.online = seen ? String(seen.online) : 'unknown';
    dot.title = !seen ? 'presence unknown' : seen.online ? 'online'
      : seen.lastSeen ? `offline, last seen ${new Date(seen.lastSeen).toLocaleString()}`
        : 'offline';
    // An encrypted chat's last message is ciphertext: the list never tries to show it.
    const last = s.lastMessage && s.encrypted ? 'encrypted message' : s.lastMessage?.content;
    li.querySelector('.last').textContent = last ?? 'no messages yet';
    const badge = li.querySelector('.badge');
    badge.textContent = String(s.unreadCount ?? 0);
    badge.dataset.unread = String(s.unreadCount ?? 0);
    badge.hidden = !s.unreadCount;
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
  });
}

function sessionItem(session) {
  const id = session.sessionId;
  let li = state.sessionItems.get(id);
  if (!li) {
    li = el('li');
    li.dataset.session = id;
    const who = el('div', 'who');
    const dot = el('span', 'dot');
    dot.dataset.testid = 'presence-dot';
    dot.dataset.online = 'unknown';
    who.append(el('div', 'peer'), el('div', 'last'));
    li.append(dot);
    const badge = el('span', 'badge');
    badge.dataset.testid = 'unread-badge';
    li.append(who, badge);
    li.addEventListener('click', () => openChat(id).catch(
      err => showError('chat-error', err.message)));
    state.sessionItems.set(id, li);
  }
  return li;
}
