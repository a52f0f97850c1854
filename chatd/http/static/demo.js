// The chatd demo page: sign in, open chats, send and receive live over STOMP, typing, ticks,
// unread badges and history scrolling. Plain browser JS on @stomp/stompjs (window.StompJs)
// and sockjs-client (window.SockJS), both served by chatd; no build step.
//
// Connection: SockJS at /ws when the server answers /ws/info (it then falls back to HTTP
// streaming or polling where WebSockets are blocked), else a plain WebSocket at /ws.
// URL parameters: ?transport=websocket forces the plain WebSocket; ?transports=a,b limits
// SockJS to those transports (e.g. xhr-streaming); ?page=N sets the history page size.
//
// The DOM carries data-* attributes (data-state, data-status, data-unread, data-seq...) that
// show the state at a glance and that the browser test reads.
'use strict';
(() => {
  const params = new URLSearchParams(window.location.search);
  const PAGE = Math.max(1, Math.min(200, Number(params.get('page')) || 20));
  const TYPING_EVERY_MS = 2000;
  const TYPING_SHOWN_MS = 3500;
  const $ = id => document.getElementById(id);

  const state = {
    token: null,
    email: null,
    client: null,
    sock: null,
    sessions: new Map(),   // sessionId -> session JSON (+ lastMessage, unreadCount)
    sessionItems: new Map(),  // sessionId -> its <li> in the session list
    open: null,            // the open chat: {id, peer, sub, bySeq: Map, oldest, newest, ...}
    total: 0,              // unread messages over all sessions (GET /api/chat/unread)
    unreadTimer: null,
    lastTypingSent: 0,
    typingTimer: null,
  };

  // -- helpers ---------------------------------------------------------------------------

  function uuid() {
    if (window.crypto?.randomUUID) return window.crypto.randomUUID();
    const b = window.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map(x => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;  // never innerHTML: contents are user text
    return node;
  }

  function showError(where, message) {
    $(where).textContent = message || '';
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await res.json().catch(() => null);
    if (res.status === 401) signedOut(data?.errorMsg || 'not signed in');
    if (!res.ok) throw new Error(data?.errorMsg || `${method} ${path}: HTTP ${res.status}`);
    return data;
  }

  function publish(destination, payload) {
    if (!state.client?.connected) throw new Error('not connected: wait for the connection');
    state.client.publish({
      destination, body: JSON.stringify(payload), headers: { 'content-type': 'application/json' },
    });
  }

  function peerOf(session) {
    const other = session.participants.find(p => p.email !== state.email);
    return (other ?? session.participants[0]).email;
  }

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
    if (state.open) subscribeTopic(state.open);
    refreshSessions().then(markAllDelivered).catch(err => showError('chat-error', err.message));
  }

  // -- sessions and unread badges --------------------------------------------------------

  async function refreshSessions() {
    const data = await api('GET', '/api/chat/sessions?limit=100');
    for (const entry of data.sessions) state.sessions.set(entry.sessionId, entry);
    renderSessions();
    scheduleUnread(0);
  }

  // What arrived while this user was away has now reached a device of theirs.
  function markAllDelivered() {
    for (const s of state.sessions.values()) {
      const last = s.lastMessage;
      if (last && last.senderEmail !== state.email && !last.delivered) {
        publish('/app/chat.delivered', { sessionId: s.sessionId, upToSeq: last.seq });
      }
    }
  }

  function scheduleUnread(delay = 150) {
    clearTimeout(state.unreadTimer);
    state.unreadTimer = setTimeout(() => {
      refreshUnread().catch(err => showError('chat-error', err.message));
    }, delay);
  }

  async function refreshUnread() {
    const data = await api('GET', '/api/chat/unread');
    const counts = new Map(data.sessions.map(s => [s.sessionId, s.count]));
    for (const s of state.sessions.values()) {
      s.unreadCount = counts.get(s.sessionId) ?? 0;
    }
    state.total = data.total;
    renderSessions();
  }

  function renderTotal() {
    const total = $('total-unread');
    total.dataset.unread = String(state.total);
    total.textContent = String(state.total);
    total.hidden = state.total === 0;
    document.title = state.total ? `(${state.total}) chatd demo` : 'chatd demo';
  }

  // One <li> per session, kept across renders (a click must not land on a replaced node);
  // nodes move only when the order changes.
  function renderSessions() {
    renderTotal();
    const list = $('sessions');
    const ordered = [...state.sessions.values()].sort((a, b) =>
      (b.lastMessage?.sentAt ?? b.createdAt).localeCompare(a.lastMessage?.sentAt ?? a.createdAt));
    ordered.forEach((s, index) => {
      const li = sessionItem(s);
      const peer = peerOf(s);
      li.dataset.peer = peer;
      li.classList.toggle('open', state.open?.id === s.sessionId);
      li.querySelector('.peer').textContent = `${peer} · ${s.intent}`;
      li.querySelector('.last').textContent = s.lastMessage?.content ?? 'no messages yet';
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
      who.append(el('div', 'peer'), el('div', 'last'));
      const badge = el('span', 'badge');
      badge.dataset.testid = 'unread-badge';
      li.append(who, badge);
      li.addEventListener('click', () => openChat(id).catch(
        err => showError('chat-error', err.message)));
      state.sessionItems.set(id, li);
    }
    return li;
  }

  // -- the open chat ---------------------------------------------------------------------

  async function openByEmail(toEmail, intent) {
    const session = await api('POST', '/api/chat/init', { toEmail, intent });
    if (!state.sessions.has(session.sessionId)) {
      state.sessions.set(session.sessionId, { ...session, lastMessage: null, unreadCount: 0 });
    }
    await openChat(session.sessionId);
  }

  async function openChat(sessionId) {
    const session = state.sessions.get(sessionId);
    if (state.open?.sub) state.open.sub.unsubscribe();
    const chat = {
      id: sessionId, peer: peerOf(session), sub: null, bySeq: new Map(), pending: new Map(),
      oldest: null, newest: 0, complete: false, loading: false,
      peerDelivered: 0, peerSeen: 0,
    };
    state.open = chat;
    $('chat').dataset.session = sessionId;
    $('chat-title').textContent = `${chat.peer} · ${session.intent}`;
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

  function subscribeTopic(chat) {
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

  async function loadOlder(chat) {
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

  function markSeen(chat) {
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

  // One <li> per message, kept in seq order; a pending one (sent, no seq yet) sits at the end.
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
    li.querySelector('.text').textContent = m.content;
    li.querySelector('.meta').textContent = new Date(m.sentAt).toLocaleTimeString();
    if (mine) {
      chat.peerDelivered = Math.max(chat.peerDelivered, m.delivered ? m.seq : 0);
      chat.peerSeen = Math.max(chat.peerSeen, m.seen ? m.seq : 0);
      setTicks(chat, entry);
    }
    const after = [...list.children].find(
      other => other.dataset.seq === undefined || Number(other.dataset.seq) > m.seq);
    list.insertBefore(li, after ?? null);
    chat.newest = Math.max(chat.newest, m.seq);
    chat.oldest = chat.oldest === null ? m.seq : Math.min(chat.oldest, m.seq);
  }

  function setTicks(chat, entry) {
    const status = entry.seq <= chat.peerSeen ? 'seen'
      : entry.seq <= chat.peerDelivered ? 'delivered' : 'sent';
    entry.li.dataset.status = status;
    entry.li.querySelector('.ticks').textContent = status === 'sent' ? '✓' : '✓✓';
    entry.li.title = status;
  }

  function sendMessage(content) {
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
      publish('/app/chat.send', { sessionId: chat.id, content, clientMessageId });
    } catch (err) {
      failPending(clientMessageId, err.message);
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
  function onChatMessage(m) {
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

  function onSendError(error) {
    failPending(error.clientMessageId, `${error.status}: ${error.errorMsg}`);
  }

  function onReceipt(receipt) {
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

  function clearTyping() {
    clearTimeout(state.typingTimer);
    $('typing').textContent = '';
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
    openByEmail($('peer-email').value.trim(), $('intent').value.trim())
      .catch(err => showError('chat-error', err.message));
  });

  $('send-form').addEventListener('submit', event => {
    event.preventDefault();
    const content = $('text').value;
    if (!state.open || !content.trim()) return;
    showError('chat-error', '');
    $('text').value = '';
    state.lastTypingSent = 0;
    sendMessage(content);
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

  const saved = window.sessionStorage.getItem('chatd.token');
  if (saved) start(saved);
})();
