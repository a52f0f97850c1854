// Drives @stomp/stompjs against chatd's /ws and prints what the clients observed as one JSON
// object on stdout; tests/chatd/realtime/test_stompjs.py asserts on it.
//
//   node chat_scenario.mjs '{"scenario": "chat", "http": "http://127.0.0.1:8080",
//                            "sessionId": "…", "tokens": {"alice": "…", "bob": "…"}}'
//   node chat_scenario.mjs '{"scenario": "refused", "http": "…", "token": "…" | null,
//                            "subscribe": "/topic/…" | null, "send": "/topic/…" | null}'
//
// chat: alice (token in the CONNECT Authorization header) and bob (token in the handshake
// query, as a browser would) exchange messages through /app/chat.send and REST, with typing,
// a duplicate send and a seen receipt. refused: one client does one forbidden thing and
// records the ERROR and the close. A step that does not happen in time ends the run with
// {"fatal": …} and exit status 1, still with everything observed so far.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import { STEP_TIMEOUT, harness, inboxes } from './harness.mjs';

const options = JSON.parse(process.argv[2]);
const wsBase = options.http.replace('http://', 'ws://') + '/ws';
const out = { scenario: options.scenario, clients: {} };

const { finish, fail, within } = harness(out);

// One stompjs client with an inbox per subscription that steps can wait on in order.
function makeClient(name, { url, headers }) {
  const seen = { subprotocol: null, connected: null, stompErrors: [], socketCloses: [], messages: {} };
  out.clients[name] = seen;
  const inbox = inboxes(within, name);
  const client = new Client({
    webSocketFactory: () => {
      const socket = new WebSocket(url, ['v12.stomp', 'v11.stomp', 'v10.stomp']);
      socket.addEventListener('open', () => {
        seen.subprotocol = socket.protocol;
      });
      return socket;
    },
    connectHeaders: headers ?? {},
    reconnectDelay: 0,
    connectionTimeout: STEP_TIMEOUT,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: () => {},
  });
  const closed = new Promise(resolve => {
    client.onWebSocketClose = event => {
      seen.socketCloses.push({ code: event?.code, reason: event?.reason });
      resolve();
    };
  });
  const errored = new Promise(resolve => {
    client.onStompError = frame => {
      seen.stompErrors.push({ headers: frame.headers, body: frame.body });
      resolve();
    };
  });
  const connected = new Promise(resolve => {
    client.onConnect = frame => {
      seen.connected = { headers: frame.headers };
      resolve();
    };
  });

  function deliver(id, message) {
    const entry = { headers: message.headers, body: JSON.parse(message.body) };
    (seen.messages[id] ??= []).push(entry);
    inbox.push(id, entry);
  }

  function receipt(id) {
    return within(new Promise(resolve => client.watchForReceipt(id, resolve)), `RECEIPT ${id}`);
  }

  return {
    client,
    closed,
    errored,
    async start() {
      client.activate();
      await within(connected, `${name} CONNECTED`);
    },
    async subscribe(destination, id, extra = {}) {
      const watched = receipt(`sub-${id}`);
      client.subscribe(destination, message => deliver(id, message), { id, receipt: `sub-${id}`, ...extra });
      await watched;
    },
    async publish(destination, body, receiptId) {
      const headers = { 'content-type': 'application/json' };
      if (receiptId) headers.receipt = receiptId;
      const watched = receiptId ? receipt(receiptId) : null;
      client.publish({ destination, body: JSON.stringify(body), headers });
      await watched;
    },
    next: inbox.next,
    async stop() {
      await client.deactivate();
    },
  };
}

const scenarios = {
  async chat() {
    const sid = options.sessionId;
    const topic = `/topic/session.${sid}`;
    const alice = makeClient('alice', { url: wsBase, headers: { Authorization: `Bearer ${options.tokens.alice}` } });
    const bob = makeClient('bob', { url: `${wsBase}?access_token=${options.tokens.bob}` });
    await alice.start();
    await bob.start();
    await alice.subscribe('/user/queue/ack', 'ack');
    await alice.subscribe('/user/queue/error', 'error');
    await alice.subscribe('/user/queue/receipts', 'receipts');
    await bob.subscribe(topic, 'topic');
    await bob.subscribe('/user/queue/messages', 'messages');

    const send = { sessionId: sid, content: 'hi from stompjs', clientMessageId: 'js-1' };
    await alice.publish('/app/chat.send', send, 'send-1');
    out.ack = await alice.next('ack');
    out.bobTopic = [await bob.next('topic')];
    out.bobQueue = [await bob.next('messages')];

    await alice.publish('/app/chat.send', send, 'send-2'); // a retry: same message, no new row
    out.duplicateAck = await alice.next('ack');

    await alice.publish('/app/chat.typing', { sessionId: sid }, 'typing-1');
    out.typing = await bob.next('topic');

    const answer = await fetch(`${options.http}/api/chat/message`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${options.tokens.alice}` },
      body: JSON.stringify({ sessionId: sid, content: 'hi from REST', clientMessageId: 'rest-1' }),
    });
    out.restStatus = answer.status;
    out.bobTopic.push(await bob.next('topic'));
    out.bobQueue.push(await bob.next('messages'));

    await bob.publish('/app/chat.seen', { sessionId: sid, upToSeq: 2 }, 'seen-1');
    out.receipt = await alice.next('receipts');

    await alice.stop();
    await bob.stop();
  },

  async refused() {
    const headers = options.token ? { Authorization: `Bearer ${options.token}` } : {};
    const peer = makeClient('peer', { url: wsBase, headers });
    peer.client.activate();
    if (options.subscribe || options.send) {
      await within(new Promise(resolve => {
        peer.client.onConnect = () => resolve();
      }), 'CONNECTED');
      if (options.subscribe) peer.client.subscribe(options.subscribe, () => {}, { id: 'x' });
      if (options.send) peer.client.publish({ destination: options.send, body: '{}' });
    }
    await within(peer.errored, 'ERROR');
    await within(peer.closed, 'close');
    await peer.client.deactivate();
  },
};

async function main() {
  const scenario = scenarios[options.scenario];
  if (!scenario) throw new Error(`unknown scenario ${options.scenario}`);
  await scenario();
  out.ok = true;
  finish(0);
}

main().catch(fail);
