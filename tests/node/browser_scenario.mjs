// Drives chatd's demo page in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core: two browser contexts, alice and bob, chat through the page. Prints what the
// pages showed as one JSON object on stdout; tests/chatd/realtime/test_browser.py asserts on it.
//
//   node browser_scenario.mjs '{"http": "http://127.0.0.1:8080", "artifacts": "/tmp/shots",
//                               "noWebSocket": ["bob"], "history": {"peer": "carol@…",
//                               "count": 45}, "page": 20}'
//
// query: appended to the page's URL (e.g. "?transport=websocket").
// presence: {"grace": seconds}: at the end alice sees bob's dot online, bob closes his page,
// and alice must see his dot go offline within the server's grace period plus a second.
// noWebSocket: those users' pages run with window.WebSocket deleted, so sockjs-client must
// fall back to an HTTP transport. history: the test stored `count` messages from `peer` to bob
// beforehand; bob scrolls that chat back to its first message. Every step waits for what a user
// would see; one that does not happen in time ends the run with {"fatal": …} and exit status 1,
// still with everything observed so far and a screenshot of each page.
// {"scenario": "refused-token", "token": "…"} instead pastes a token the server must refuse;
// {"scenario": "restart"} restarts the server mid-chat (see restart() below);
// {"scenario": "refused-send", "tooLong": "…"} sends a text the server refuses.
// {"scenario": "bound-session", "transports": ["xhr-polling", …]}: over each SockJS transport in
// turn, alice's page authenticates in the CONNECT frame (no access_token in the SockJS URL), so
// only its cookie binds the session to her; a stranger (a browser context without her cookies)
// who knows the session URL tries every HTTP transport on it, then alice sends and must still
// see her message stored.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import path from 'node:path';

const STEP_TIMEOUT = 10_000;
// Debian's Chromium; --no-sandbox because the tests run as root, where its sandbox refuses to
// start. playwright-core never downloads a browser of its own.
const launch = () => chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
const options = JSON.parse(process.argv[2]);
const base = options.http;
const noWebSocket = new Set(options.noWebSocket ?? []);
const out = { users: {}, origins: [], steps: [] };
const origins = new Set();
const users = {};
let browser;

mkdirSync(options.artifacts, { recursive: true });

async function screenshots(suffix) {
  for (const [name, user] of Object.entries(users)) {
    const file = path.join(options.artifacts, `${name}${suffix}.png`);
    await user.page.screenshot({ path: file, fullPage: true }).catch(() => {});
    (out.users[name].screenshots ??= []).push(file);
  }
}

async function finish(status) {
  out.origins = [...origins].sort();
  if (browser) await browser.close().catch(() => {});
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(status));
}

async function fail(reason) {
  out.fatal = String(reason?.stack ?? reason);
  await screenshots('-failed');
  await finish(1);
}

async function step(label, fn) {
  out.steps.push(label);
  try {
    return await fn();
  } catch (err) {
    throw new Error(`step "${label}": ${err.message}`);
  }
}

// A SockJS session's base path (/ws/{server}/{session}) from one of its request URLs.
const SOCKJS_SESSION = /^(\/ws\/[^/]+\/[^/]+)\/(xhr|xhr_send|xhr_streaming|eventsource|htmlfile|jsonp|jsonp_send)$/;

async function signIn(name, email, query = options.query ?? '') {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  if (noWebSocket.has(name)) {
    await context.addInitScript(() => { delete window.WebSocket; });
  }
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const seen = { email, consoleErrors: [], pageErrors: [], failedRequests: [], errorResponses: [] };
  out.users[name] = seen;
  const sockjsSessions = new Set();
  page.on('request', request => {
    const url = new URL(request.url());
    origins.add(url.origin);
    const session = SOCKJS_SESSION.exec(url.pathname);
    if (session) sockjsSessions.add(session[1]);
  });
  page.on('console', message => {
    // A failed load is logged too: it is recorded once, with its URL, as an errorResponse.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      seen.consoleErrors.push(message.text());
    }
  });
  page.on('response', response => {
    if (response.status() >= 400) {
      seen.errorResponses.push(`${response.status()} ${new URL(response.url()).pathname}`);
    }
  });
  page.on('pageerror', error => seen.pageErrors.push(String(error)));
  page.on('requestfailed', request => {
    // Long-lived SockJS/XHR requests are aborted when the page closes: not an error.
    if (!request.url().includes('/ws/')) seen.failedRequests.push(request.url());
  });
  users[name] = { page, email, context, sockjsSessions };
  await page.goto(`${base}/${query}`);
  seen.appVisibleBeforeSignIn = await page.isVisible('#app');
  await page.fill('#email', email);
  await page.click('#sign-in-form button');
  await page.waitForSelector('#connection[data-state="connected"]');
  seen.me = await page.textContent('#me');
  seen.transport = await page.getAttribute('#connection', 'data-transport');
  seen.hasWebSocket = await page.evaluate(() => typeof window.WebSocket === 'function');
  return users[name];
}

const messages = page => page.$$eval('#messages li', items => items.map(li => ({
  seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq),
  text: li.querySelector('.text').textContent,
  mine: li.classList.contains('mine'),
  status: li.dataset.status ?? null,
})));

const badge = (page, sid) => page.getAttribute(
  `#sessions li[data-session="${sid}"] [data-testid="unread-badge"]`, 'data-unread')
  .then(Number);

async function run() {
  browser = await launch();
  const alice = await step('alice signs in', () => signIn('alice', 'alice@example.com'));
  const bob = await step('bob signs in', () => signIn('bob', 'bob@example.com'));
  const history = options.history;

  if (history) {
    await step('bob sees the stored chat unread', () => bob.page.waitForSelector(
      `#sessions li[data-peer="${history.peer}"] [data-unread="${history.count}"]`));
  }

  const sid = await step('alice opens a chat with bob', async () => {
    await alice.page.fill('#peer-email', bob.email);
    await alice.page.fill('#intent', 'demo');
    await alice.page.click('#open-form button');
    await alice.page.waitForSelector('#chat:not([data-session=""])');
    return alice.page.getAttribute('#chat', 'data-session');
  });
  out.sessionId = sid;

  await step('alice sends; bob gets it unread; alice sees it delivered', async () => {
    await alice.page.fill('#text', 'hello bob');
    await alice.page.press('#text', 'Enter');
    await bob.page.waitForSelector(`#sessions li[data-session="${sid}"] [data-unread="1"]`);
    await alice.page.waitForSelector('#messages li.mine[data-seq="1"][data-status="delivered"]');
  });
  if (history) {
    // The list and the total come from separate answers: wait until both are in.
    await step('bob\'s total counts both chats', () => bob.page.waitForSelector(
      `#total-unread[data-unread="${history.count + 1}"]`));
  }
  out.bobUnreadBeforeOpen = await badge(bob.page, sid);
  out.bobTotalBeforeOpen = Number(await bob.page.getAttribute('#total-unread', 'data-unread'));
  out.aliceAfterDelivered = await messages(alice.page);
  await screenshots('-1-unread');

  await step('bob opens the chat; alice sees it seen; bob\'s badge clears', async () => {
    await bob.page.click(`#sessions li[data-session="${sid}"]`);
    await bob.page.waitForSelector('#messages li[data-seq="1"]');
    await alice.page.waitForSelector('#messages li.mine[data-seq="1"][data-status="seen"]');
    await bob.page.waitForSelector(`#sessions li[data-session="${sid}"] [data-unread="0"]`,
      { state: 'attached' });
  });
  if (history) {
    await step('bob\'s total drops to the stored chat\'s count', () => bob.page.waitForSelector(
      `#total-unread[data-unread="${history.count}"]`, { state: 'attached' }));
  }
  out.bobAfterOpen = await messages(bob.page);
  out.bobUnreadAfterOpen = await badge(bob.page, sid);

  await step('bob types; alice sees the typing indicator', async () => {
    await bob.page.type('#text', 'hi alice', { delay: 15 });
    await alice.page.waitForFunction(() => document.getElementById('typing').textContent !== '');
  });
  out.aliceTyping = await alice.page.textContent('#typing');

  await step('bob sends; alice sees it live; bob sees it seen', async () => {
    await bob.page.press('#text', 'Enter');
    await alice.page.waitForSelector('#messages li[data-seq="2"]:not(.mine)');
    await bob.page.waitForSelector('#messages li.mine[data-seq="2"][data-status="seen"]');
    await alice.page.waitForFunction(() => document.getElementById('typing').textContent === '');
  });
  out.aliceAfterReply = await messages(alice.page);
  out.bobAfterReply = await messages(bob.page);
  await screenshots('-2-chat');

  if (history) {
    await step('bob scrolls the stored chat back to its first message', async () => {
      await bob.page.click(`#sessions li[data-peer="${history.peer}"]`);
      await bob.page.waitForSelector(`#messages li[data-seq="${history.count}"]`);
      out.historyFirstPage = (await messages(bob.page)).map(m => m.seq);
      for (let round = 0; round < 50; round += 1) {
        if (await bob.page.getAttribute('#messages', 'data-complete') === 'true') break;
        const oldest = await bob.page.getAttribute('#messages', 'data-oldest-seq');
        await bob.page.$eval('#messages', list => list.scrollTo(0, 0));
        await bob.page.waitForFunction(
          was => document.getElementById('messages').dataset.oldestSeq !== was, oldest);
      }
      await bob.page.waitForSelector(
        `#sessions li[data-peer="${history.peer}"] [data-unread="0"]`, { state: 'attached' });
      await bob.page.waitForSelector('#total-unread[data-unread="0"]', { state: 'attached' });
    });
    out.historyAll = (await messages(bob.page)).map(m => m.seq);
    out.bobTotalAtEnd = Number(await bob.page.getAttribute('#total-unread', 'data-unread'));
  }
  if (options.presence) await presence(alice, bob, sid);
  await screenshots('');
  await finish(0);
}

const dot = sid => `#sessions li[data-session="${sid}"] [data-testid="presence-dot"]`;

async function presence(alice, bob, sid) {
  await step('alice sees bob online', () => alice.page.waitForSelector(
    `${dot(sid)}[data-online="true"]`));
  out.aliceSawBobOnline = true;
  await screenshots('-3-online');
  const limit = (options.presence.grace + 1) * 1000;
  await step('bob closes his page; alice sees him offline within grace + 1 s', async () => {
    const closed = Date.now();
    await bob.page.close();
    delete users.bob;  // no more screenshots of a closed page
    await alice.page.waitForSelector(`${dot(sid)}[data-online="false"]`, { timeout: limit });
    out.bobOfflineAfterMs = Date.now() - closed;
  });
  out.aliceDotTitle = await alice.page.getAttribute(dot(sid), 'title');
}

// A pasted token the server refuses: the page goes back to its sign-in form and says why.
async function refusedToken() {
  browser = await launch();
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  out.users.mallory = { screenshots: [] };
  users.mallory = { page };
  await page.goto(`${base}/`);
  await step('mallory pastes a forged token', async () => {
    await page.click('#token-box summary');
    await page.fill('#token-input', options.token);
    await page.click('#token-form button');
    await page.waitForFunction(() => document.getElementById('sign-in-error').textContent !== '');
  });
  out.signInVisible = await page.isVisible('#sign-in');
  out.appVisible = await page.isVisible('#app');
  out.signInError = await page.textContent('#sign-in-error');
  out.storedToken = await page.evaluate(() => window.sessionStorage.getItem('chatd.token'));
  await screenshots('-refused');
  await step('mallory signs in by email instead', async () => {
    await page.fill('#email', 'mallory@example.com');
    await page.click('#sign-in-form button');
    await page.waitForSelector('#connection[data-state="connected"]');
  });
  out.meAfterSignIn = await page.textContent('#me');
  out.signInErrorAfterSignIn = await page.textContent('#sign-in-error');
  await screenshots('');
  await finish(0);
}

// The server goes away and comes back on the same address (the test restarts it when this
// script prints {"waiting": "restart"}, and answers with a line on stdin once it is up and a
// message was sent by REST meanwhile). Both pages must reconnect by themselves, show what
// was sent while they were away exactly once, and chat live again.
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function waitForTest(what, details) {
  process.stdout.write(JSON.stringify({ waiting: what, ...details }) + '\n');
  const { value, done } = await stdinLines.next();
  if (done) throw new Error(`stdin closed while waiting for ${what}`);
  return JSON.parse(value);
}

async function restart() {
  browser = await launch();
  const alice = await step('alice signs in', () => signIn('alice', 'alice@example.com'));
  const bob = await step('bob signs in', () => signIn('bob', 'bob@example.com'));
  const sid = await step('both open the chat; alice sends', async () => {
    await alice.page.fill('#peer-email', bob.email);
    await alice.page.click('#open-form button');
    await alice.page.waitForSelector('#chat:not([data-session=""])');
    const id = await alice.page.getAttribute('#chat', 'data-session');
    await alice.page.fill('#text', 'before the restart');
    await alice.page.press('#text', 'Enter');
    await bob.page.click(`#sessions li[data-session="${id}"]`);
    await alice.page.waitForSelector('#messages li.mine[data-seq="1"][data-status="seen"]');
    return id;
  });
  out.sessionId = sid;
  const connects = {};
  for (const [name, user] of Object.entries(users)) {
    connects[name] = Number(await user.page.getAttribute('#connection', 'data-connects'));
  }
  const answer = await waitForTest('restart', { sessionId: sid });
  out.restarted = answer;
  await step('both pages reconnect by themselves', async () => {
    for (const [name, user] of Object.entries(users)) {
      await user.page.waitForFunction(was => {
        const node = document.getElementById('connection');
        return node.dataset.state === 'connected' && Number(node.dataset.connects) > was;
      }, connects[name], { timeout: 30_000 });
    }
  });
  await step('what was sent meanwhile shows once; bob\'s reply arrives live', async () => {
    await bob.page.waitForSelector('#messages li[data-seq="2"]');
    await alice.page.waitForSelector('#messages li.mine[data-seq="2"][data-status="seen"]');
    await bob.page.fill('#text', 'after the restart');
    await bob.page.press('#text', 'Enter');
    await alice.page.waitForSelector('#messages li[data-seq="3"]:not(.mine)');
    await bob.page.waitForSelector('#messages li.mine[data-seq="3"][data-status="seen"]');
  });
  out.aliceAfterRestart = await messages(alice.page);
  out.bobAfterRestart = await messages(bob.page);
  await screenshots('');
  await finish(0);
}

// The server refuses a send (too long for its limit): the bubble is marked failed with the
// reason, and the next send works.
async function refusedSend() {
  browser = await launch();
  const alice = await step('alice signs in', () => signIn('alice', 'alice@example.com'));
  await step('alice opens a chat and sends a text over the limit', async () => {
    await alice.page.fill('#peer-email', 'bob@example.com');
    await alice.page.click('#open-form button');
    await alice.page.waitForSelector('#chat:not([data-session=""])');
    await alice.page.fill('#text', options.tooLong);
    await alice.page.press('#text', 'Enter');
    await alice.page.waitForSelector('#messages li.mine[data-status="failed"]');
  });
  out.sessionId = await alice.page.getAttribute('#chat', 'data-session');
  out.chatError = await alice.page.textContent('#chat-error');
  out.failedTitle = await alice.page.getAttribute('#messages li[data-status="failed"]', 'title');
  await step('the next send works', async () => {
    await alice.page.fill('#text', 'short');
    await alice.page.press('#text', 'Enter');
    await alice.page.waitForSelector('#messages li.mine[data-seq="1"][data-status="sent"]');
  });
  out.aliceMessages = await messages(alice.page);
  await screenshots('');
  await finish(0);
}

// What a stranger who knows the SockJS session URL `path` gets from each HTTP transport.
async function strangerTries(api, path) {
  const frame = JSON.stringify(['SEND\ndestination:/app/chat.send\n\n{}\u0000']);
  // A receiving transport that let the stranger in would stream on: give up after 3 s.
  const timeout = 3000;
  const url = `${base}${path}`;
  const tries = {
    xhr: () => api.post(`${url}/xhr`, { timeout }),
    xhr_streaming: () => api.post(`${url}/xhr_streaming`, { timeout }),
    eventsource: () => api.get(`${url}/eventsource`, { timeout }),
    htmlfile: () => api.get(`${url}/htmlfile?c=cb`, { timeout }),
    jsonp: () => api.get(`${url}/jsonp?c=cb`, { timeout }),
    xhr_send: () => api.post(`${url}/xhr_send`, { data: frame, timeout }),
    jsonp_send: () => api.post(`${url}/jsonp_send?c=cb`, { form: { d: frame }, timeout }),
  };
  const statuses = {};
  for (const [transport, attempt] of Object.entries(tries)) {
    statuses[transport] = await attempt().then(r => r.status(), err => `failed: ${err.message}`);
  }
  return statuses;
}

async function boundSession() {
  browser = await launch();
  const stranger = await browser.newContext();
  const api = stranger.request; // shares the stranger's (empty) cookie jar
  out.transports = {};
  for (const transport of options.transports) {
    const name = `alice-${transport}`;
    const alice = await step(`${name} signs in`,
      () => signIn(name, 'alice@example.com', `?transports=${transport}`));
    const seen = out.users[name];
    const sessions = [...alice.sockjsSessions];
    const cookies = await alice.context.cookies();
    seen.sessionCookies = cookies.filter(c => c.name === 'chatd_sockjs')
      .map(c => ({ path: c.path, httpOnly: c.httpOnly, sameSite: c.sameSite }));
    seen.cookieVisibleToScripts = (await alice.page.evaluate(() => document.cookie))
      .includes('chatd_sockjs');
    seen.sockjsSessions = sessions;
    seen.strangers = {};
    for (const path of sessions) {
      seen.strangers[path] = await step(`a stranger tries ${name}'s session`,
        () => strangerTries(api, path));
    }
    await step(`${name} sends over ${transport} and sees it stored`, async () => {
      await alice.page.fill('#peer-email', 'bob@example.com');
      await alice.page.click('#open-form button');
      await alice.page.waitForSelector('#chat:not([data-session=""])');
      await alice.page.fill('#text', `over ${transport}`);
      await alice.page.press('#text', 'Enter');
      await alice.page.waitForSelector(
        `#messages li.mine[data-status="sent"]:has-text("over ${transport}")`);
    });
    out.sessionId = await alice.page.getAttribute('#chat', 'data-session');
    seen.transportAtEnd = await alice.page.getAttribute('#connection', 'data-transport');
    out.transports[transport] = seen;
  }
  await screenshots('');
  await finish(0);
}

const scenarios = {
  chat: run, 'refused-token': refusedToken, restart, 'refused-send': refusedSend,
  'bound-session': boundSession,
};
(scenarios[options.scenario ?? 'chat'])().catch(fail);
