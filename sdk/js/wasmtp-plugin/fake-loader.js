// Node module-customization hooks for native tests (registered by register-fakes.js). Each
// `wasmtp:plugin/IFACE@VERSION` import becomes a module whose functions call
// `globalThis.__wasmtpFakeHost.IFACE.FUNCTION(...)`, the host testing.js installs.
const FUNCTIONS = {
  log: ['log'],
  notes: ['get', 'set', 'remove', 'entries'],
  kv: ['get', 'set', 'delete', 'incr'],
  dns: ['a', 'aaaa', 'mx', 'txt', 'ptr'],
  clock: ['now'],
  types: [],
};

export async function resolve(specifier, context, next) {
  const m = /^wasmtp:plugin\/([a-z-]+)@[0-9.]+$/.exec(specifier);
  if (m && m[1] in FUNCTIONS) return { url: `wasmtp-fake:${m[1]}`, shortCircuit: true };
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!url.startsWith('wasmtp-fake:')) return next(url, context);
  const iface = url.slice('wasmtp-fake:'.length);
  const body = FUNCTIONS[iface].map((f, i) =>
    `const f${i} = (...a) => host().${iface}[${JSON.stringify(f)}](...a);\nexport { f${i} as ${JSON.stringify(f)} };`);
  const source = [
    `const host = () => { const h = globalThis.__wasmtpFakeHost; if (!h) throw new Error('no FakeHost is active: call the plugin through FakeHost.call'); return h; };`,
    ...body,
  ].join('\n');
  return { format: 'module', source, shortCircuit: true };
}
