// Drives @stomp/stompjs over sockjs-client (the browser stack of the original service's web
// clients) against chatd's SockJS endpoint /ws, on one forced transport, and prints what the
// clients observed as one JSON object on stdout; tests/chatd/realtime/test_sockjs_node.py
// asserts on it.
//
//   node sockjs_scenario.mjs '{"http": "http://127.0.0.1:8080", "transport": "xhr-streaming",
//                              "sessionId": "…", "tokens": {"alice": "…", "bob": "…"},
//                              "heartbeatMs": 200, "idleMs": 1500}'
//
// alice (token in the CONNECT Authorization header) and bob (token only as `access_token` in
// the SockJS URL) subscribe with receipts. Both URLs carry `access_token`: it is what binds an
// HTTP-transport session to its opener here, since sockjs-client under Node keeps no cookies
// (a browser gets the session's cookie instead; test_browser.py). alice sends through
// /app/chat.send; bob receives it on the session topic and alice gets the ack. Then both stay idle for idleMs
// with STOMP heart-beats on, and alice sends again: the message still arrives. A step that does
// not happen in time ends the run with {"fatal": …} and exit status 1.
import { Client } from '@stomp/stompjs';
import SockJS from 'sockjs-client';
import { STEP_TIMEOUT, harness, inboxes } from './harness.mjs';

const options = JSON.parse(process.argv[2]);
const base = options.http + '/ws';
const out = { transport: options.transport, clients: {} };

const { finish, fail, within } = harness(out);

function makeClient(name, { url, headers }) {
  const seen = { transports: [], connected: null, stompErrors: [], closes: [], pings: 0, pongs: 0 };
  out.clients[name] = seen;
  const inbox = inboxes(within, name);
  const heartbeat = options.heartbeatMs ?? 0;
  const client = new Client({
    webSocketFactory: () => {
      const socket = new SockJS(url, null, { transports: [options.transport] });
      socket.addEventListener('open', () => seen.transports.push(socket.transport));
      return socket;
    },
    connectHeaders: headers ?? {},
    reconnectDelay: 0,
    connectionTimeout: STEP_TIMEOUT,
    heartbeatIncoming: heartbeat,
    heartbeatOutgoing: heartbeat,
    debug: line => {
      if (line.startsWith('>>> PING')) seen.pings += 1;
      else if (line.startsWith('<<< PONG')) seen.pongs += 1;
    },
  });
  const closed = new Promise(resolve => {
    client.onWebSocketClose = event => {
      seen.closes.push({ code: event?.code, reason: event?.reason });
      resolve();
    };
  });
  client.onStompError = frame => seen.stompErrors.push({ headers: frame.headers, body: frame.body });
  const connected = new Promise(resolve => {
    client.onConnect = frame => {
      seen.connected = { headers: frame.headers };
      resolve();
    };
  });

  function deliver(id, message) {
    const entry = { headers: message.headers, body: JSON.parse(message.body) };
    inbox.push(id, entry);
  }

  function receipt(id) {
    return within(new Promise(resolve => client.watchForReceipt(id, resolve)), `RECEIPT ${id}`);
  }

  return {
    client,
    closed,
    async start() {
      client.activate();
      await within(connected, `${name} CONNECTED`);
    },
    async subscribe(destination, id) {
      const watched = receipt(`sub-${id}`);
      client.subscribe(destination, message => deliver(id, message), { id, receipt: `sub-${id}` });
      await watched;
      seen.receipts = (seen.receipts ?? 0) + 1;
    },
    publish(destination, body) {
      client.publish({ destination, body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    },
    next: inbox.next,
    async stop() {
      await client.deactivate();
      await within(closed, `${name} close`);
    },
  };
}

async function main() {
  const sid = options.sessionId;
  const alice = makeClient('alice', {
    url: `${base}?access_token=${options.tokens.alice}`,
    headers: { Authorization: `Bearer ${options.tokens.alice}` },
  });
  const bob = makeClient('bob', { url: `${base}?access_token=${options.tokens.bob}` });
  await alice.start();
  await bob.start();
  await alice.subscribe('/user/queue/ack', 'ack');
  await bob.subscribe(`/topic/session.${sid}`, 'topic');

  alice.publish('/app/chat.send', { sessionId: sid, content: `hi over ${options.transport}`, clientMessageId: 'sockjs-1' });
  out.ack = await alice.next('ack');
  out.received = [await bob.next('topic')];

  await new Promise(resolve => setTimeout(resolve, options.idleMs ?? 0));
  alice.publish('/app/chat.send', { sessionId: sid, content: 'after the idle time', clientMessageId: 'sockjs-2' });
  out.received.push(await bob.next('topic'));

  await alice.stop();
  await bob.stop();
  out.ok = true;
  finish(0);
}

main().catch(fail);
