// The open chat: history (scrolling back page by page), live messages, ticks, typing.
import {
  $, PAGE, TYPING_SHOWN_MS, api, el, peerOf, publish, showError, state, uuid,
} from './demo-common.js';
import { refreshSessions, renderSessions, scheduleUnread } from './demo-sessions.js';
import { decrypt, e2e, encrypt, ensureOwnKey, safetyNumber } from './demo-e2e.js';

export async function openByEmail(toEmail, intent, encrypted = false) {
  const session = await api('POST', '/api/chat/init', { toEmail, intent, encrypted });
  if (!state.sessions.has(session.sessionId)) {
    state.sessions.set(session.sessionId, { ...session, lastMessage: null, unreadCount: 0 });
  }
  await openChat(session.sessionId);
}

export async function openChat(sessionId) {
  const session = state.sessions.get(sessionId);
  if (state.open?.sub) state.open.sub.unsubscribe();
  const chat = {
    id: sessionId, peer: peerOf(session), encrypted: Boolean(session.encrypted),
    sub: null, bySeq: new Map(), pending: new Map(),
    oldest: null, newest: 0, complete: false, loading: false,
    peerDelivered: 0, peerSeen: 0,
  };
  state.open = chat;
  $('chat').dataset.session = sessionId;
  $('chat-title').textContent = `${chat.encrypted ? '🔒 ' : ''}${chat.peer} · ${session.intent}`;
  $('chat').dataset.encrypted = String(chat.encrypted);
  showE2eInfo(chat);
  $('messages').replaceChildren();
  $('typing').textContent = '';
  showError('chat-error', '');
  $('text').disabled = false;
  $('send-form').querySelector('button').disabled = false;
  renderSessions();
  await loadOlder(chat);
  if (state.open !== chat) return;
  scrollToBottom();
  subscribeTopic(chat);
  markSeen(chat);
  // Fill the view: a short first page may leave nothing to scroll.
  while (state.open === chat && !chat.complete && !scrollable()) await loadOlder(chat);
  $('text').focus();
}

// The lock, the safety number of both current keys, and any key-change warning for the peer.
export function showE2eInfo(chat) {
  $('e2e-info').hidden = !chat.encrypted;
  showKeyWarning(chat);
  if (!chat.encrypted) return;
  $('safety-number').textContent = '…';
  safetyNumber(chat.peer).then(number => {
    if (state.open !== chat) return;
    $('safety-number').textContent = number;
    $('safety-number').dataset.number = number;
    showKeyWarning(chat);  // fetching the peer's key may have found it changed
  }).catch(err => {
    if (state.open === chat) $('safety-number').textContent = `unavailable (${err.message})`;
  });
}

function showKeyWarning(chat) {
  const warning = chat.encrypted ? e2e.warnings.get(chat.peer) : undefined;
  $('key-warning').textContent = warning ?? '';
  $('key-warning').hidden = !warning;
}

export function subscribeTopic(chat) {
  if (!state.client?.connected) return;
  // x-since-seq: the server replays what was stored after the newest message shown, so
  // nothing sent between the history fetch and this subscription is missed.
  chat.sub = state.client.subscribe(`/topic/session.${chat.id}`, m => {
    const body = JSON.parse(m.body);
    const event = m.headers.event;
    if (event === 'message') onChatMessage(body);
    else if (event === 'receipt') onReceipt(body);
    else if (event === 'typing') onTyping(body);
  }, { 'x-since-seq': String(chat.newest) });
}

function scrollable() {
  const list = $('messages');
  return list.scrollHeight > list.clientHeight + 4;
}

function scrollToBottom() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

export async function loadOlder(chat) {
  if (chat.loading || chat.complete) return;
  chat.loading = true;
  try {
    const first = chat.oldest === null;
    const before = first ? '' : `&before=${chat.oldest}`;
    const page = await api('GET', `/api/chat/${chat.id}/history?limit=${PAGE}${before}`);
    if (state.open !== chat) return;
    const list = $('messages');
    const keep = list.scrollHeight - list.scrollTop;  // hold the view still while prepending
    for (const m of page) render(chat, m);
    if (!first) list.scrollTop = list.scrollHeight - keep;
    if (page.length) chat.oldest = Math.min(...page.map(m => m.seq), chat.oldest ?? Infinity);
    chat.complete = page.length < PAGE || chat.oldest === 1;
    list.dataset.oldestSeq = String(chat.oldest ?? '');
    list.dataset.complete = String(chat.complete);
  } finally {
    chat.loading = false;
  }
}

export function markSeen(chat) {
  let upTo = 0;
  for (const m of chat.bySeq.values()) {
    if (m.senderEmail !== state.email && !m.seen) upTo = Math.max(upTo, m.seq);
  }
  const session = state.sessions.get(chat.id);
  if (!upTo && !session?.unreadCount) return;
  upTo = Math.max(upTo, chat.newest);
  try {
    publish('/app/chat.seen', { sessionId: chat.id, upToSeq: upTo });
  } catch (err) {
    showError('chat-error', err.message);
    return;
  }
  for (const m of chat.bySeq.values()) {
    if (m.senderEmail !== state.email && m.seq <= upTo) m.seen = true;
  }
  if (session) {
    state.total = Math.max(0, state.total - (session.unreadCount ?? 0));
    session.unreadCount = 0;
  }
  renderSessions();
  scheduleUnread();
}

// One <li> per message, kept in seq order; pending ones (sent, no seq yet) sit at the end.
function render(chat, m) {
  const list = $('messages');
  let li = chat.bySeq.get(m.seq)?.li ?? chat.pending.get(m.clientMessageId)?.li;
  const mine = m.senderEmail === state.email;
  if (!li) {
    li = el('li');
    li.append(el('span', 'text'), el('span', 'meta'));
    if (mine) li.append(el('span', 'ticks'));
  } else if (li.parentNode) {
    li.remove();
  }
  if (mine && m.clientMessageId) chat.pending.delete(m.clientMessageId);
  const entry = { ...m, li };
  chat.bySeq.set(m.seq, entry);
  li.classList.toggle('mine', mine);
  li.dataset.seq = String(m.seq);
  li.dataset.messageId = m.messageId;
  if (chat.encrypted) showDecrypted(chat, li, m);
  else li.querySelector('.text').textContent = m.content;
  li.querySelector('.meta').textContent = new Date(m.sentAt).toLocaleTimeString()
    + (chat.encrypted ? ' 🔒' : '');
  if (mine) {
    chat.peerDelivered = Math.max(chat.peerDelivered, m.delivered ? m.seq : 0);
    chat.peerSeen = Math.max(chat.peerSeen, m.seen ? m.seq : 0);
    setTicks(chat, entry);
  }
  // Before a later message or one still pending; a failed one keeps its place in time.
  const after = [...list.children].find(other => other.dataset.status === 'pending'
    || (other.dataset.seq !== undefined && Number(other.dataset.seq) > m.seq));
  list.insertBefore(li, after ?? null);
  chat.newest = Math.max(chat.newest, m.seq);
  chat.oldest = chat.oldest === null ? m.seq : Math.min(chat.oldest, m.seq);
}

// The bubble shows "decrypting…" until the text is known, or why it cannot be.
function showDecrypted(chat, li, m) {
  const text = li.querySelector('.text');
  if (li.dataset.decrypt !== 'ok' || li.dataset.messageId !== m.messageId) {
    li.dataset.decrypt = 'pending';
    text.textContent = 'decrypting…';
  }
  decrypt(m, chat.peer).then(result => {
    if (li.dataset.messageId !== m.messageId) return;
    li.dataset.decrypt = result.ok ? 'ok' : 'failed';
    text.textContent = result.text;
  });
}

function setTicks(chat, entry) {
  const status = entry.seq <= chat.peerSeen ? 'seen'
    : entry.seq <= chat.peerDelivered ? 'delivered' : 'sent';
  entry.li.dataset.status = status;
  entry.li.querySelector('.ticks').textContent = status === 'sent' ? '✓' : '✓✓';
  entry.li.title = status;
}

export async function sendMessage(content) {
  const chat = state.open;
  const clientMessageId = uuid();
  const li = el('li', 'mine');
  li.append(el('span', 'text', content), el('span', 'meta', 'sending…'), el('span', 'ticks', '…'));
  li.dataset.status = 'pending';
  li.dataset.clientMessageId = clientMessageId;
  chat.pending.set(clientMessageId, { li });
  $('messages').append(li);
  scrollToBottom();
  try {
    const sealed = chat.encrypted ? await seal(chat, content) : content;
    publish('/app/chat.send', { sessionId: chat.id, content: sealed, clientMessageId });
  } catch (err) {
    failPending(clientMessageId, err.message);
  }
}

async function seal(chat, content) {
  await ensureOwnKey();
  try {
    return await encrypt(chat.id, chat.peer, content);
  } catch (err) {
    if (String(err.message).includes('has not published')) {
      throw new Error(`${chat.peer} has not set up encryption yet: not sent`);
    }
    throw err;
  }
}

function failPending(clientMessageId, message) {
  const pending = state.open?.pending.get(clientMessageId);
  if (pending) {
    pending.li.dataset.status = 'failed';
    pending.li.querySelector('.meta').textContent = 'not sent';
    pending.li.title = message;
  }
  showError('chat-error', message);
}

// -- live events -----------------------------------------------------------------------

// A message from any source (user queue, session topic, send ack): shown once, by seq.
export function onChatMessage(m) {
  const session = state.sessions.get(m.sessionId);
  if (!session) {
    refreshSessions().catch(err => showError('chat-error', err.message));
  } else if (!session.lastMessage || session.lastMessage.seq <= m.seq) {
    session.lastMessage = m;
  }
  const fromPeer = m.senderEmail !== state.email;
  const chat = state.open;
  if (chat && chat.id === m.sessionId) {
    const known = chat.bySeq.get(m.seq);
    if (!known || known.messageId !== m.messageId) {
      const atBottom = !scrollable()
        || $('messages').scrollHeight - $('messages').scrollTop - $('messages').clientHeight < 60;
      render(chat, m);
      if (atBottom) scrollToBottom();
    }
    if (fromPeer) {
      clearTyping();
      // Seen only when the user can see it: an open chat in a background tab is delivered.
      if (document.visibilityState === 'visible') markSeen(chat);
      else markDelivered(m);
    }
  } else if (fromPeer) {
    markDelivered(m);
    scheduleUnread();
  }
  renderSessions();
}

function markDelivered(m) {
  if (m.delivered) return;
  try {
    publish('/app/chat.delivered', { sessionId: m.sessionId, upToSeq: m.seq });
  } catch { /* delivered again on the next connect */ }
}

export function onSendError(error) {
  failPending(error.clientMessageId, `${error.status}: ${error.errorMsg}`);
}

export function onReceipt(receipt) {
  if (receipt.readerEmail === state.email) {  // read on this or another of my devices
    scheduleUnread();
    return;
  }
  const chat = state.open;
  if (!chat || chat.id !== receipt.sessionId) return;
  chat.peerDelivered = Math.max(chat.peerDelivered, receipt.upToSeq);
  if (receipt.status === 'seen') chat.peerSeen = Math.max(chat.peerSeen, receipt.upToSeq);
  for (const entry of chat.bySeq.values()) {
    if (entry.senderEmail === state.email) setTicks(chat, entry);
  }
}

function onTyping(event) {
  if (event.email === state.email || state.open?.id !== event.sessionId) return;
  $('typing').textContent = `${event.email} is typing…`;
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(clearTyping, TYPING_SHOWN_MS);
}

export function clearTyping() {
  clearTimeout(state.typingTimer);
  $('typing').textContent = '';
}
