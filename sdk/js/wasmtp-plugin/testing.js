// Native tests for wasmtp plugins written in JavaScript: `FakeHost` runs a plugin's hooks under
// plain node with in-memory log, notes, kv, dns and clock, through the same export
// (`exportPlugin`) the component uses. Run with `./build.sh test` (node --test, with the
// `wasmtp:plugin/*` imports mapped to these fakes by register-fakes.js).
//
//   import { test } from 'node:test';
//   import assert from 'node:assert/strict';
//   import { FakeHost } from '../wasmtp-plugin/testing.js';
//   import { Stamp } from '../app.js';
//
//   test('adds the header', () => {
//     const host = new FakeHost();
//     const out = host.call(Stamp, 'data', [host.connection(), host.envelope('a@b.example',
//       ['c@d.example']), host.message('Subject: hi\r\n\r\nbody\r\n')], { /* config */ });
//     assert.deepEqual(out.modifications[0], { tag: 'add-header', val: { name: 'X-Stamp', value: 'yes' } });
//   });

import { exportPlugin } from './index.js';

/**
 * The `message` resource of the data hook, over raw text; `auth` is what `authResults()` returns
 * (an object shaped like the WIT `auth-results`, or undefined as when verification is off).
 */
export class FakeMessage {
  constructor(raw, auth = undefined) {
    this.auth = auth;
    this.raw = new TextEncoder().encode(String(raw).replace(/\r?\n/g, '\r\n'));
    const text = new TextDecoder().decode(this.raw);
    const end = text.indexOf('\r\n\r\n');
    this.head = end < 0 ? text : text.slice(0, end);
    this.bodyText = end < 0 ? '' : text.slice(end + 4);
    this.fields = [];
    for (const line of this.head.split('\r\n')) {
      if (/^[ \t]/.test(line) && this.fields.length) {
        this.fields[this.fields.length - 1].value += ' ' + line.trim();
      } else if (line.includes(':')) {
        const i = line.indexOf(':');
        this.fields.push({ name: line.slice(0, i), value: line.slice(i + 1).trim() });
      }
    }
  }
  headers() { return this.fields.map((f) => ({ ...f })); }
  header(name) { return this.fields.filter((f) => f.name.toLowerCase() === name.toLowerCase()).map((f) => f.value); }
  size() { return BigInt(this.raw.length); }
  body(offset, len) { return this.raw.slice(Number(offset), Number(offset) + len); }
  text(maxBytes) { return new TextDecoder().decode(new TextEncoder().encode(this.bodyText).slice(0, maxBytes)); }
  authResults() { return this.auth; }
}

/**
 * In-memory capabilities. `logs` collects [level, message] pairs; `notes` and `kv` are Maps a
 * test can fill and read; `dnsAnswers` maps `'mx example.org'` (kind, space, name) to a list of
 * answers or to a dns-error value (`{ tag: 'not-found' }`), which is thrown; `nowMs` is what the
 * clock returns.
 */
export class FakeHost {
  constructor({ nowMs = 0n, dnsAnswers = {} } = {}) {
    this.logs = [];
    this.notes = new Map();
    this.kv = new Map();
    this.nowMs = BigInt(nowMs);
    this.dnsAnswers = dnsAnswers;
    const dns = (kind) => (name) => {
      const answer = this.dnsAnswers[`${kind} ${name}`] ?? [];
      if (!Array.isArray(answer)) throw answer;
      return answer;
    };
    this.log = { log: (level, message) => this.logs.push([level, message]) };
    this.notesIface = {
      get: (k) => this.notes.get(k),
      set: (k, v) => { this.notes.set(k, v); },
      remove: (k) => { this.notes.delete(k); },
      entries: (p) => [...this.notes].filter(([k]) => k.startsWith(p)).sort(([a], [b]) => (a < b ? -1 : 1)),
    };
    this.kvIface = {
      get: (k) => this.kv.get(k),
      set: (k, v) => { this.kv.set(k, v); },
      delete: (k) => { this.kv.delete(k); },
      incr: (k, delta) => {
        const n = BigInt(new TextDecoder().decode(this.kv.get(k) ?? new TextEncoder().encode('0'))) + delta;
        this.kv.set(k, new TextEncoder().encode(String(n)));
        return n;
      },
    };
    this.dns = Object.fromEntries(['a', 'aaaa', 'mx', 'txt', 'ptr'].map((k) => [k, dns(k)]));
    this.clock = { now: () => this.nowMs };
  }

  // Records the host hands to hooks.
  connection({ peerIp = '192.0.2.1', helo = 'client.example', authenticated, listener = 'mx' } = {}) {
    return { sessionId: 'test-session', peerIp, peerPort: 40000, localIp: '127.0.0.1', localPort: 25,
      listener, tls: undefined, authenticated, helo };
  }
  envelope(sender, recipients = []) {
    return { sender, senderParams: [], recipients: recipients.map((address) => ({ address, params: [] })) };
  }
  recipient(address) { return { address, params: [] }; }
  message(raw, auth = undefined) { return new FakeMessage(raw, auth); }
  report(recipient, detail = '250 ok', sender = 'a@example.org') {
    return { queueId: 'TESTQUEUEID', sender, recipient, attempts: 1, detail };
  }

  /** `init(config)` then `hook(...args)` through the plugin's export with this host active;
   * returns what the component would return. A refused config throws the error string. */
  call(PluginClass, hook, args = [], config = {}) {
    return this.#active(() => {
      const hooks = exportPlugin(PluginClass);
      hooks.init(JSON.stringify(config));
      return hooks[hook](...args);
    });
  }

  /** Only `init`: throws the error string when the config is refused. */
  init(PluginClass, config = {}) {
    return this.#active(() => exportPlugin(PluginClass).init(JSON.stringify(config)));
  }

  #active(f) {
    const saved = globalThis.__wasmtpFakeHost;
    globalThis.__wasmtpFakeHost = { log: this.log, notes: this.notesIface, kv: this.kvIface, dns: this.dns, clock: this.clock };
    try {
      return f();
    } finally {
      globalThis.__wasmtpFakeHost = saved;
    }
  }
}
