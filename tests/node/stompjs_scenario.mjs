// Drives @stomp/stompjs against the broker and prints what the client observed as one JSON
// object on stdout; tests/stomp/test_conformance_stompjs.py asserts on it.
//
//   node stompjs_scenario.mjs '{"scenario": "basic", "transport": "ws", "url": "ws://…/ws",
//                               "destination": "/queue/x"}'
//   node stompjs_scenario.mjs '{"scenario": "basic", "transport": "tcp", "host": "127.0.0.1",
//                               "port": 61613, "destination": "/queue/x"}'
//
// Scenarios: basic (connect, subscribe with a watched receipt, send with a receipt, receive),
// binary (Uint8Array bodies with NUL bytes), heartbeat (short heart-beats, then silence),
// deadServer (once heart-beats flow, SIGSTOP the broker, process `pausePid`, and time how long
// the client takes to notice; SIGCONT it after).
// A step that does not happen in time ends the run with {"fatal": …} and exit status 1, still
// with everything observed so far.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

import { TcpWebSocket } from './tcp_websocket.mjs';
import { STEP_TIMEOUT, harness } from './harness.mjs';

const options = JSON.parse(process.argv[2]);
const out = {
  scenario: options.scenario,
  transport: options.transport,
  connected: null,
  subprotocol: null,
  receipts: [],
  messages: [],
  stompErrors: [],
  socketErrors: [],
  socketCloses: [],
  heartbeatsReceived: 0,
  heartbeatsLost: 0,
};
let socket = null;

const { finish, fail, within } = harness(out);

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

function makeSocket() {
  if (options.transport === 'tcp') {
    socket = new TcpWebSocket(options.host, options.port);
  } else {
    socket = new WebSocket(options.url, ['v12.stomp', 'v11.stomp', 'v10.stomp']);
    socket.addEventListener('open', () => {
      out.subprotocol = socket.protocol;
    });
  }
  return socket;
}

function record(message) {
  out.messages.push({
    headers: message.headers,
    bytes: Array.from(message.binaryBody),
    isBinaryBody: message.isBinaryBody,
  });
}

// One queue of received messages that steps can wait on in order.
const inbox = [];
let wake = null;
function nextMessage(label) {
  return within(
    new Promise(resolve => {
      const take = () => {
        if (inbox.length) resolve(inbox.shift());
        else wake = take;
      };
      take();
    }),
    label,
  );
}

function onMessage(message) {
  record(message);
  inbox.push(message);
  const waiting = wake;
  wake = null;
  waiting?.();
}

const heartbeat = options.heartbeat ?? 0;
const client = new Client({
  webSocketFactory: makeSocket,
  reconnectDelay: 0,
  connectionTimeout: STEP_TIMEOUT,
  heartbeatIncoming: heartbeat,
  heartbeatOutgoing: heartbeat,
  debug: () => {},
});
client.onStompError = frame => out.stompErrors.push({ headers: frame.headers, body: frame.body });
client.onWebSocketError = event => out.socketErrors.push(String(event?.message ?? event?.type));
client.onWebSocketClose = event => out.socketCloses.push({ code: event?.code, reason: event?.reason });
// Steps may wait for the next heart-beat received or lost.
let onBeat = null;
let onLost = null;
client.onHeartbeatReceived = () => {
  out.heartbeatsReceived += 1;
  onBeat?.();
};
client.onHeartbeatLost = () => {
  out.heartbeatsLost += 1;
  onLost?.();
};

const connected = new Promise(resolve => {
  client.onConnect = frame => {
    out.connected = { headers: frame.headers };
    resolve();
  };
});

function receipt(id) {
  return within(
    new Promise(resolve => {
      client.watchForReceipt(id, frame => {
        out.receipts.push(frame.headers['receipt-id']);
        resolve(frame);
      });
    }),
    `RECEIPT ${id}`,
  );
}

async function subscribe(destination, id) {
  const watched = receipt(`sub-${id}`);
  client.subscribe(destination, onMessage, { id, receipt: `sub-${id}` });
  await watched;
}

async function publish(params, receiptId) {
  const watched = receipt(receiptId);
  client.publish({ ...params, headers: { ...(params.headers ?? {}), receipt: receiptId } });
  await watched;
}

const scenarios = {
  async basic(destination) {
    await subscribe(destination, 'sub-basic');
    await publish(
      { destination, body: 'hello from stompjs \u2713', headers: { 'x-custom': 'yes', 'x-odd': 'a:b\nc\\d' } },
      'send-1',
    );
    await nextMessage('MESSAGE');
  },

  async binary(destination) {
    await subscribe(destination, 'sub-binary');
    // Not valid UTF-8 (so it cannot travel in a text WebSocket message), with NULs inside.
    const raw = new Uint8Array([0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x00, 0x41, 0x00]);
    await publish({ destination, binaryBody: raw, headers: { 'content-type': 'application/octet-stream' } }, 'bin-1');
    await nextMessage('binary MESSAGE');
    // Valid UTF-8 with a NUL in the middle: only content-length says where it ends.
    const nul = new TextEncoder().encode('before\u0000after');
    await publish({ destination, binaryBody: nul }, 'bin-2');
    await nextMessage('NUL MESSAGE');
  },

  async heartbeat(destination) {
    const before = out.heartbeatsReceived;
    await sleep(options.quietMs ?? 3000);
    out.heartbeatsDuringQuiet = out.heartbeatsReceived - before;
    out.connectedAfterQuiet = client.connected;
    out.socketOpenAfterQuiet = socket.readyState === 1;
    // The session is still usable after the silence.
    await subscribe(destination, 'sub-hb');
    await publish({ destination, body: 'still here' }, 'hb-1');
    await nextMessage('MESSAGE after silence');
  },

  // Ends the connection itself (stompjs closes the socket when it declares the server dead).
  async deadServer() {
    await within(new Promise(resolve => { onBeat = resolve; }), 'a server heart-beat');
    const lost = new Promise(resolve => { onLost = resolve; });
    process.kill(options.pausePid, 'SIGSTOP');
    const pausedAt = performance.now();
    try {
      await within(lost, 'the client to notice the paused server');
      out.lostAfterMs = Math.round(performance.now() - pausedAt);
    } finally {
      process.kill(options.pausePid, 'SIGCONT');
    }
    return 'ended';
  },
};

async function main() {
  const scenario = scenarios[options.scenario];
  if (!scenario) throw new Error(`unknown scenario ${options.scenario}`);
  client.activate();
  await within(connected, 'CONNECTED');
  if ((await scenario(options.destination)) === 'ended') {
    await client.deactivate();
    out.ok = true;
    finish(0);
    return;
  }
  const closed = new Promise(resolve => {
    const previous = client.onWebSocketClose;
    client.onWebSocketClose = event => {
      previous(event);
      resolve();
    };
  });
  await client.deactivate();
  await within(closed, 'socket close after DISCONNECT');
  out.ok = true;
  finish(0);
}

main().catch(fail);
