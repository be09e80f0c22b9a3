// Native tests (plain node, fake host): plugins/build-js.sh runs them before building, or
// `bash sdk/js/build.sh test --sdk sdk/js --wit wit plugins/js/header-rewrite`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeHost } from '../wasmtp-plugin/testing.js';
import { HeaderRewrite } from '../app.js';

const CONFIG = {
  remove: ['User-Agent'],
  add: { 'X-Policy': 'checked' },
  internal_domains: ['example.test'],
  external_subject_prefix: '[EXT] ',
};
const RAW = 'Subject: hello\r\nUser-Agent: Mailer 1.0\r\n\r\nbody\r\n';

function data(host, sender, raw = RAW, config = CONFIG) {
  return host.call(HeaderRewrite, 'data',
    [host.connection(), host.envelope(sender, ['a@example.test']), host.message(raw)], config);
}

test('external mail: removes, adds, tags the subject', () => {
  const host = new FakeHost();
  const out = data(host, 'someone@outside.example');
  assert.deepEqual(out.verdict, { tag: 'continue' });
  assert.deepEqual(out.modifications, [
    { tag: 'remove-header', val: 'User-Agent' },
    { tag: 'add-header', val: { name: 'X-Policy', value: 'checked' } },
    { tag: 'change-header', val: { name: 'Subject', value: '[EXT] hello' } },
  ]);
  assert.equal(host.notes.get('header-rewrite.external'), 'outside.example');
});

test('internal mail keeps its subject; an absent field is not removed', () => {
  const out = data(new FakeHost(), 'boss@Example.Test', 'Subject: hi\r\n\r\nx\r\n');
  assert.deepEqual(out.modifications, [{ tag: 'add-header', val: { name: 'X-Policy', value: 'checked' } }]);
});

test('a subject already tagged is not tagged twice', () => {
  const out = data(new FakeHost(), 'x@outside.example', 'Subject: [EXT] hello\r\n\r\nx\r\n');
  assert.ok(!out.modifications.some((m) => m.tag === 'change-header'));
});

test('unknown keys and wrong types are refused with the key named', () => {
  assert.throws(() => new FakeHost().init(HeaderRewrite, { remov: [] }), /unknown config key `remov`/);
  assert.throws(() => new FakeHost().init(HeaderRewrite, { remove: 'User-Agent' }),
    /config key `remove`: expected a list, got a string/);
  assert.throws(() => new FakeHost().init(HeaderRewrite, { add: { 'Bad Name': 'x' } }), /not a header field name/);
});

test('an exception in a hook is logged with the plugin name, then thrown on', () => {
  const host = new FakeHost();
  assert.throws(() => host.call(HeaderRewrite, 'data', [host.connection(), host.envelope('a@b.example'), null], CONFIG));
  assert.equal(host.logs.length, 1);
  assert.equal(host.logs[0][0], 'error');
  assert.match(host.logs[0][1], /^header-rewrite: exception in data: TypeError/);
});
