// Native tests: `./build.sh test` runs them under plain node (node --test) with a fake host (no
// server, no component build).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeHost } from '../wasmtp-plugin/testing.js';
import { Tagger } from '../app.js';

function run(config, authenticated) {
  const host = new FakeHost();
  const conn = host.connection({ peerIp: '192.0.2.1', helo: 'mail.example.org', authenticated });
  const env = host.envelope('a@example.org', ['b@example.net']);
  return host.call(Tagger, 'data', [conn, env, host.message('Subject: hi\r\n\r\nhello\r\n')], config);
}

test('adds the header', () => {
  assert.deepEqual(run({}).modifications, [
    { tag: 'add-header', val: { name: 'X-{{name}}', value: 'from 192.0.2.1 helo mail.example.org' } },
  ]);
});

test('skips authenticated clients when asked', () => {
  assert.deepEqual(run({ skip_authenticated: true }, 'alice').modifications, []);
  assert.equal(run({ skip_authenticated: true }).modifications.length, 1);
});

test('refuses a bad config', () => {
  for (const bad of [{ header: 'a b' }, { heder: 'X-A' }, { skip_authenticated: 'yes' }]) {
    assert.throws(() => new FakeHost().init(Tagger, bad));
  }
});
