// End-to-end encryption in the demo page, the reference client (docs/security.md,
// End-to-end encrypted sessions). The server only ever sees public keys and envelopes.
//
// Keys: on first use, an ECDH P-256 key pair is generated with WebCrypto; the private key is
// NOT extractable and lives in IndexedDB (per email, every key ever made, so old messages stay
// readable on this device). The public key is published with PUT /api/keys/me; its id is its
// RFC 7638 thumbprint, which this page recomputes for every key the server hands out, so a
// server cannot swap the key behind a known id. The id last seen of each peer's key is pinned
// in IndexedDB too: a different one (announced live on /user/queue/keys, or found on the next
// visit) raises a "key changed" warning.
//
// A message: ECDH(own private, peer public) → HKDF-SHA256 (random 16-byte salt, info
// "chatd-e2e-v1") → AES-256-GCM (random 12-byte iv), the session id and both key ids as
// additional data; sent as {"v":1,"alg":…,"kid":sender key,"rkid":recipient key,"salt","iv",
// "ct"} in `content`. No ratchet: no forward secrecy per message.
import { api, state } from './demo-common.js';

export const ALG = 'ECDH-P256+HKDF-SHA256+A256GCM';
const INFO = 'chatd-e2e-v1';
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

export const e2e = {
  own: null,              // {email, kid, privateKey, publicJwk, createdAt}
  ownFor: null,           // the email ownLoading is for
  ownLoading: null,       // Promise of `own`
  peerKeys: new Map(),    // `${email} ${kid}` -> Promise<CryptoKey>
  current: new Map(),     // email -> Promise<kid> (the peer's current key id)
  plain: new Map(),       // messageId -> Promise<{ok, text}>
  warnings: new Map(),    // email -> the key-change warning shown for that peer
};

export function available() {
  return Boolean(window.crypto?.subtle && window.indexedDB);
}

// -- encodings -------------------------------------------------------------------------

export function b64u(bytes) {
  let text = '';
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function unb64u(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text)) throw new Error('not base64url');
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), c => c.charCodeAt(0));
}

async function sha256(text) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', utf8.encode(text)));
}

export async function thumbprint(jwk) {
  return b64u(await sha256(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })));
}

// -- IndexedDB -------------------------------------------------------------------------

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open('chatd-e2e', 1);
    request.onupgradeneeded = () => {
      request.result.createObjectStore('keys', { keyPath: ['email', 'kid'] });
      request.result.createObjectStore('current', { keyPath: 'email' });
      request.result.createObjectStore('pinned', { keyPath: ['owner', 'email'] });
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

let dbPromise = null;

async function idb(storeName, mode, work) {
  const db = await (dbPromise ??= openDb());
  return new Promise((resolve, reject) => {
    const tx = db.transaction(storeName, mode);
    const request = work(tx.objectStore(storeName));
    tx.oncomplete = () => resolve(request?.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

const ownKey = (kid, email = state.email) => idb('keys', 'readonly', s => s.get([email, kid]));

// -- own key ---------------------------------------------------------------------------

// The signed-in user's current key pair: found in IndexedDB, else generated; (re)published
// either way (idempotent), so a server that lost it learns it again. Once per page and user:
// two concurrent first uses must not make two keys.
export function ensureOwnKey() {
  const email = state.email;
  if (e2e.ownFor !== email || !e2e.ownLoading) {
    e2e.ownFor = email;
    e2e.ownLoading = loadOwnKey(email);
    e2e.ownLoading.catch(() => { e2e.ownLoading = null; });
  }
  return e2e.ownLoading;
}

async function loadOwnKey(email) {
  const pointer = await idb('current', 'readonly', s => s.get(email));
  let record = pointer ? await ownKey(pointer.kid, email) : null;
  if (record) {
    try {
      await publish(record);
    } catch (err) {
      if (!String(err.message).includes('generate a new key')) throw err;
      record = null;  // the server knows this key as replaced (by another device): a new one
    }
  }
  if (!record) {
    const pair = await crypto.subtle.generateKey(
      { name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
    const exported = await crypto.subtle.exportKey('jwk', pair.publicKey);
    const publicJwk = { kty: 'EC', crv: 'P-256', x: exported.x, y: exported.y };
    record = {
      email, kid: await thumbprint(publicJwk), privateKey: pair.privateKey, publicJwk,
      createdAt: new Date().toISOString(),
    };
    await idb('keys', 'readwrite', s => s.put(record));
    await idb('current', 'readwrite', s => s.put({ email, kid: record.kid }));
    await publish(record);
  }
  e2e.own = record;
  return record;
}

function publish(record) {
  return api('PUT', '/api/keys/me', { agreementKey: record.publicJwk, kid: record.kid });
}

// -- peers' keys -----------------------------------------------------------------------

async function importChecked(answer, email, kid) {
  const jwk = answer.agreementKey;
  if (answer.email !== email || (kid && answer.kid !== kid) || await thumbprint(jwk) !== answer.kid) {
    throw new Error(`the server answered a key that is not ${email}'s key ${kid ?? ''}`);
  }
  return crypto.subtle.importKey('jwk', { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y },
    { name: 'ECDH', namedCurve: 'P-256' }, false, []);
}

function peerKey(email, kid) {
  const cacheKey = `${email} ${kid}`;
  if (!e2e.peerKeys.has(cacheKey)) {
    const path = `/api/keys/${encodeURIComponent(email)}/${encodeURIComponent(kid)}`;
    const loading = api('GET', path).then(answer => importChecked(answer, email, kid));
    loading.catch(() => e2e.peerKeys.delete(cacheKey));  // try again next time
    e2e.peerKeys.set(cacheKey, loading);
  }
  return e2e.peerKeys.get(cacheKey);
}

export function currentKid(email) {
  if (!e2e.current.has(email)) {
    const loading = api('GET', `/api/keys/${encodeURIComponent(email)}`).then(async answer => {
      const checked = importChecked(answer, email, answer.kid);
      e2e.peerKeys.set(`${email} ${answer.kid}`, checked);
      await checked;
      await pin(email, answer.kid);
      return answer.kid;
    });
    loading.catch(() => e2e.current.delete(email));
    e2e.current.set(email, loading);
  }
  return e2e.current.get(email);
}

// Trust on first use: remember the peer's key id; a different one later is a warning.
async function pin(email, kid) {
  const owner = state.email;
  const pinned = await idb('pinned', 'readonly', s => s.get([owner, email]));
  if (pinned && pinned.kid !== kid) {
    e2e.warnings.set(email, `${email}'s key changed: compare the safety number again`);
  }
  if (!pinned || pinned.kid !== kid) {
    await idb('pinned', 'readwrite', s => s.put({ owner, email, kid }));
  }
}

// -- messages --------------------------------------------------------------------------

async function messageKey(privateKey, publicKey, salt) {
  const secret = await crypto.subtle.deriveBits({ name: 'ECDH', public: publicKey }, privateKey, 256);
  const hkdf = await crypto.subtle.importKey('raw', secret, 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey({ name: 'HKDF', hash: 'SHA-256', salt, info: utf8.encode(INFO) },
    hkdf, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}

const aad = (sessionId, kid, rkid) => utf8.encode(`${INFO}|${sessionId}|${kid}|${rkid}`);

// The envelope (a JSON string) carrying `text` from the signed-in user to `peer`.
export async function encrypt(sessionId, peer, text) {
  const own = await ensureOwnKey();
  const rkid = await currentKid(peer);
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const key = await messageKey(own.privateKey, await peerKey(peer, rkid), salt);
  const ct = await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv, additionalData: aad(sessionId, own.kid, rkid) }, key, utf8.encode(text));
  return JSON.stringify({
    v: 1, alg: ALG, kid: own.kid, rkid, salt: b64u(salt), iv: b64u(iv), ct: b64u(ct),
  });
}

// {ok: true, text} or {ok: false, text: why}; never throws (a bad message must not break
// the page). Each message is decrypted once.
export function decrypt(message, peer) {
  if (!e2e.plain.has(message.messageId)) {
    e2e.plain.set(message.messageId, open(message, peer).then(
      text => ({ ok: true, text }),
      err => ({ ok: false, text: `could not decrypt this message (${err.message})` })));
  }
  return e2e.plain.get(message.messageId);
}

async function open(message, peer) {
  let envelope;
  try {
    envelope = JSON.parse(message.content);
  } catch {
    throw new Error('not an envelope');
  }
  if (envelope?.v !== 1 || envelope.alg !== ALG) throw new Error('unknown envelope');
  const fromMe = message.senderEmail === state.email;
  // Mine: my key is the sender's (kid); theirs: mine is the recipient's (rkid).
  const [myKid, theirKid, theirEmail] = fromMe
    ? [envelope.kid, envelope.rkid, peer] : [envelope.rkid, envelope.kid, message.senderEmail];
  const mine = await ownKey(myKid);
  if (!mine) throw new Error('its key is not on this device');
  const key = await messageKey(mine.privateKey, await peerKey(theirEmail, theirKid),
    unb64u(envelope.salt));
  const plain = await crypto.subtle.decrypt(
    { name: 'AES-GCM', iv: unb64u(envelope.iv),
      additionalData: aad(message.sessionId, envelope.kid, envelope.rkid) },
    key, unb64u(envelope.ct));
  return fromUtf8.decode(plain);
}

// -- safety number ---------------------------------------------------------------------

// Four groups of five digits from both current key ids, the same on both sides: two people
// who read the same number (in person, on a call) know no server swapped a key.
export async function safetyNumber(peer) {
  const own = await ensureOwnKey();
  const theirs = await currentKid(peer);
  const digest = await sha256([own.kid, theirs].sort().join('|'));
  const view = new DataView(digest.buffer);
  const groups = [0, 4, 8, 12].map(i => String(view.getUint32(i) % 100000).padStart(5, '0'));
  return groups.join(' ');
}

// A `keys` event: forget the cached current key of that peer (the next use fetches and pins
// the new one, which raises the warning); true for a peer's event, false for one's own.
export function onKeyChange(event) {
  if (event.email === state.email) return false;
  e2e.current.delete(event.email);
  return true;
}
