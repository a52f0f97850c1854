// An end-to-end encrypted chat through the demo page in headless Chromium (playwright-core),
// alice and bob each on their own chatd instance. Prints what the pages showed as one JSON
// object; tests/chatd/realtime/test_e2e_browser.py asserts on it and then searches the
// database and the RabbitMQ traffic for the texts.
//
//   node e2e_scenario.mjs '{"alice": "http://127.0.0.1:8081", "bob": "http://127.0.0.1:8082",
//                           "artifacts": "/tmp/shots", "texts": ["…", "…", "…"]}'
//
// Steps: both sign in (each page makes and publishes its key pair); alice opens an encrypted
// chat and sends texts[0]; bob reads it and answers texts[1]; bob signs in on a new device (a
// fresh browser context: no IndexedDB, so a new key) and alice's page warns that bob's key
// changed; the new device cannot read the old messages and says so; alice sends texts[2],
// which the new device reads and the old one cannot. A step that does not happen in time ends
// the run with {"fatal": …} and exit status 1, with screenshots.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const STEP_TIMEOUT = 15_000;
const options = JSON.parse(process.argv[2]);
const [first, reply, later] = options.texts;
const out = { users: {}, steps: [] };
const pages = {};
let browser;

mkdirSync(options.artifacts, { recursive: true });

async function finish(status) {
  if (browser) await browser.close().catch(() => {});
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(status));
}

async function screenshots(suffix) {
  for (const [name, page] of Object.entries(pages)) {
    const file = path.join(options.artifacts, `${name}${suffix}.png`);
    await page.screenshot({ path: file, fullPage: true }).catch(() => {});
  }
}

async function step(label, fn) {
  out.steps.push(label);
  try {
    return await fn();
  } catch (err) {
    throw new Error(`step "${label}": ${err.message}`);
  }
}

async function signIn(name, email, base) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const seen = { email, pageErrors: [], consoleErrors: [] };
  out.users[name] = seen;
  page.on('pageerror', error => seen.pageErrors.push(String(error)));
  page.on('console', message => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      seen.consoleErrors.push(message.text());
    }
  });
  pages[name] = page;
  await page.goto(`${base}/`);
  await page.fill('#email', email);
  await page.click('#sign-in-form button');
  await page.waitForSelector('#connection[data-state="connected"]');
  await page.waitForSelector('#me[data-kid]');  // key pair made and published
  seen.kid = await page.getAttribute('#me', 'data-kid');
  seen.secureContext = await page.evaluate(() => window.isSecureContext);
  return page;
}

const messages = page => page.$$eval('#messages li', items => items.map(li => ({
  seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq),
  text: li.querySelector('.text').textContent,
  mine: li.classList.contains('mine'),
  decrypt: li.dataset.decrypt ?? null,
})));

const settled = (page, seq) => page.waitForSelector(
  `#messages li[data-seq="${seq}"]:is([data-decrypt="ok"], [data-decrypt="failed"])`);

async function run() {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  const alice = await step('alice signs in', () => signIn('alice', 'alice@example.com', options.alice));
  const bob = await step('bob signs in', () => signIn('bob', 'bob@example.com', options.bob));

  const sid = await step('alice opens an encrypted chat with bob', async () => {
    await alice.fill('#peer-email', 'bob@example.com');
    await alice.fill('#intent', 'secret');
    await alice.check('#encrypted');
    await alice.click('#open-form button');
    await alice.waitForSelector('#chat[data-encrypted="true"]');
    await alice.waitForSelector('#safety-number[data-number]');
    return alice.getAttribute('#chat', 'data-session');
  });
  out.sessionId = sid;
  out.aliceTitle = await alice.textContent('#chat-title');
  out.aliceLockShown = await alice.isVisible('#e2e-info');
  out.aliceSafety = await alice.getAttribute('#safety-number', 'data-number');

  await step('alice sends; bob reads it decrypted', async () => {
    await alice.fill('#text', first);
    await alice.press('#text', 'Enter');
    await settled(alice, 1);
    await bob.waitForSelector(`#sessions li[data-session="${sid}"][data-encrypted="true"]`);
    await bob.click(`#sessions li[data-session="${sid}"]`);
    await settled(bob, 1);
    await bob.waitForSelector('#safety-number[data-number]');
  });
  out.bobSafety = await bob.getAttribute('#safety-number', 'data-number');
  out.bobListPreview = await bob.textContent(`#sessions li[data-session="${sid}"] .last`);

  await step('bob answers; alice reads it live', async () => {
    await bob.fill('#text', reply);
    await bob.press('#text', 'Enter');
    await settled(alice, 2);
    await settled(bob, 2);
  });
  out.aliceBefore = await messages(alice);
  out.bobBefore = await messages(bob);
  out.aliceWarningBefore = await alice.isVisible('#key-warning');
  await screenshots('-1-chat');

  const bobNew = await step('bob signs in on a new device; alice is warned', async () => {
    const page = await signIn('bobNewDevice', 'bob@example.com', options.bob);
    await alice.waitForSelector('#key-warning:not([hidden])');
    await alice.waitForFunction(
      was => document.getElementById('safety-number').dataset.number !== was, out.aliceSafety);
    return page;
  });
  out.aliceWarning = await alice.textContent('#key-warning');
  out.aliceSafetyAfter = await alice.getAttribute('#safety-number', 'data-number');

  await step('the new device opens the chat: the old history is unreadable there', async () => {
    await bobNew.click(`#sessions li[data-session="${sid}"]`);
    await settled(bobNew, 1);
    await settled(bobNew, 2);
    await bobNew.waitForSelector('#safety-number[data-number]');
  });
  out.bobNewSafety = await bobNew.getAttribute('#safety-number', 'data-number');

  await step('alice sends to the new key; the new device reads it, the old cannot', async () => {
    await alice.fill('#text', later);
    await alice.press('#text', 'Enter');
    await settled(alice, 3);
    await settled(bobNew, 3);
    await settled(bob, 3);
  });
  out.aliceAfter = await messages(alice);
  out.bobNewAfter = await messages(bobNew);
  out.bobOldAfter = await messages(bob);
  await screenshots('');
  await finish(0);
}

run().catch(async err => {
  out.fatal = String(err?.stack ?? err);
  await screenshots('-failed');
  await finish(1);
});
