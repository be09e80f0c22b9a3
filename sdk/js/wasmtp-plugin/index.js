// wasmtp-plugin: write wasmtp policy plugins in JavaScript (componentize-js).
//
// Extend `Plugin`, override only the hooks you need (every hook defaults to "no opinion"), and
// export it from your app module:
//
//   import { Plugin, exportPlugin, outcome, addHeader } from './wasmtp-plugin/index.js';
//
//   class Stamp extends Plugin {
//     static pluginName = 'stamp';
//     data(conn, env, msg) {
//       return outcome({ mods: [addHeader('X-Stamp', 'yes')] });
//     }
//   }
//   export const hooks = exportPlugin(Stamp);
//
// What the SDK does for you:
// - hooks you do not override answer `continue` (no routes at `deliver`, nothing for the
//   notification hooks);
// - a hook may return a verdict, an outcome, or undefined (= continue) whatever the WIT return
//   type is: the SDK converts;
// - `init` parses the JSON config against `static config` (a table of key descriptions) and
//   refuses unknown keys and wrong types with a message naming the key
//   (`static allowUnknownConfig = true` turns the unknown-key check off);
// - an exception in a hook is logged at error level through the host's `log` with the plugin's
//   name, the hook and the stack, then thrown on, so the call traps and the server applies the
//   plugin's `on_error`: the log says why, not just `unreachable`.
//
// `log` and `notes` are always granted and imported here. kv, dns and clock are in
// `./kv.js`, `./dns.js`, `./clock.js`: import them only when you build against the `plugin`
// world (componentize-js imports every interface of its world, so the server config must then
// grant "kv", "dns" and "clock").
//
// Native tests: `./testing.js` (FakeHost), run with `./build.sh test`.

import { log as hostLog } from 'wasmtp:plugin/log@0.2.0';
import * as hostNotes from 'wasmtp:plugin/notes@0.2.0';

export const SDK_VERSION = '0.2.0';

// Verdicts ---------------------------------------------------------------------------------------

function reply(text, code, enhanced) {
  if (!text && code === undefined && enhanced === undefined) return undefined;
  return { code, enhanced, text: text ?? '' };
}

/** No opinion: the next plugin (or the server's own policy) decides. */
export const continue_ = () => ({ tag: 'continue' });
/** Accept now, skipping the remaining plugins at this hook. A code must be 2xx. */
export const accept = (text, { code, enhanced } = {}) => ({ tag: 'accept', val: reply(text, code, enhanced) });
/** Refuse permanently (default `550 5.7.1`; a code must be 5xx). */
export const reject = (text, { code, enhanced } = {}) => ({ tag: 'reject', val: reply(text, code, enhanced) });
/** Refuse temporarily (default `451 4.7.1`; a code must be 4xx). */
export const tempfail = (text, { code, enhanced } = {}) => ({ tag: 'tempfail', val: reply(text, code, enhanced) });
/** Send the reply (default `421 4.7.0`) and close the connection. */
export const disconnect = (text, { code, enhanced } = {}) => ({ tag: 'disconnect', val: reply(text, code, enhanced) });
/** Answer success but drop the message (at `rcpt`: drop that recipient). */
export const discard = () => ({ tag: 'discard' });
/** Accept the message into quarantine; `reason` is shown to the operator. */
export const quarantine = (reason) => ({ tag: 'quarantine', val: String(reason) });

// Modifications and routes -----------------------------------------------------------------------

/** Add a header field at the top of the message. */
export const addHeader = (name, value) => ({ tag: 'add-header', val: { name, value: String(value) } });
/** Remove every header field with this name (case-insensitive). */
export const removeHeader = (name) => ({ tag: 'remove-header', val: name });
/** Replace the first field with this name (and remove the others); add it when absent. */
export const changeHeader = (name, value) => ({ tag: 'change-header', val: { name, value: String(value) } });
/** Replace the envelope sender (`''` for the null sender). */
export const setSender = (address) => ({ tag: 'set-sender', val: address });
/** Add an envelope recipient. */
export const addRecipient = (address) => ({ tag: 'add-recipient', val: address });
/** Remove an envelope recipient. */
export const removeRecipient = (address) => ({ tag: 'remove-recipient', val: address });

/** Let the next plugin or the server's own routing decide this recipient. */
export const routeDefault = () => ({ tag: 'default' });
/** Deliver into this local mailbox. */
export const routeLocal = (mailbox) => ({ tag: 'local', val: mailbox });
/** Relay to this host over SMTP (port 25 when none). */
export const routeRelay = (host, port) => ({ tag: 'relay', val: { host, port } });
/** Drop this recipient's copy silently. */
export const routeDiscard = () => ({ tag: 'discard' });

const OUTCOME = Symbol('wasmtp-outcome');

/** What `mailFrom`, `rcpt` and `data` answer: `outcome({ verdict: reject('no') })`,
 * `outcome({ mods: [addHeader(...)] })`. A missing verdict is continue. */
export function outcome({ verdict, mods = [] } = {}) {
  return { [OUTCOME]: true, verdict: verdict ?? continue_(), modifications: [...mods] };
}

function toVerdict(value) {
  if (value === undefined || value === null) return continue_();
  if (value[OUTCOME]) {
    if (value.modifications.length) throw new TypeError('this hook answers a verdict only; modifications are not allowed');
    return value.verdict;
  }
  return value;
}

function toOutcome(value) {
  if (value && value[OUTCOME]) return { verdict: value.verdict, modifications: value.modifications };
  if (value && 'verdict' in value && 'modifications' in value) return value;
  return { verdict: toVerdict(value), modifications: [] };
}

// Capabilities -----------------------------------------------------------------------------------

/** The server's log, tagged with the plugin name and hook (always granted). */
export const log = {
  trace: (message) => hostLog('trace', String(message)),
  debug: (message) => hostLog('debug', String(message)),
  info: (message) => hostLog('info', String(message)),
  warn: (message) => hostLog('warn', String(message)),
  error: (message) => hostLog('error', String(message)),
};

/** Per-transaction notes shared by the plugins of a session (always granted). */
export const notes = {
  get: (key) => hostNotes.get(key),
  set: (key, value) => hostNotes.set(key, String(value)),
  remove: (key) => hostNotes.remove(key),
  entries: (prefix = '') => hostNotes.entries(prefix),
};

/** The lower-cased domain of `local@domain` (`''` when there is none). */
export function domainOf(address) {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

// Config -----------------------------------------------------------------------------------------

/** Throw from `configure()` to refuse the config; the message reaches the server log (and
 * `check-config`) with the plugin's name. */
export class ConfigError extends Error {}

function kindOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a table';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a number';
  return `a ${typeof v}`;
}

const CHECKS = {
  string: (v) => typeof v === 'string',
  number: (v) => typeof v === 'number',
  integer: (v) => Number.isInteger(v),
  boolean: (v) => typeof v === 'boolean',
  array: (v) => Array.isArray(v),
  object: (v) => v !== null && typeof v === 'object' && !Array.isArray(v),
};
const NAMES = { string: 'a string', number: 'a number', integer: 'an integer', boolean: 'a boolean', array: 'a list', object: 'a table' };

function checkValue(key, value, type, items) {
  if (!CHECKS[type](value)) throw new ConfigError(`config key \`${key}\`: expected ${NAMES[type]}, got ${kindOf(value)}`);
  if (items && type === 'array') value.forEach((v, i) => checkValue(`${key}[${i}]`, v, items));
  if (items && type === 'object') Object.entries(value).forEach(([k, v]) => checkValue(`${key}.${k}`, v, items));
}

/**
 * Parses the JSON config the host hands to `init` against `schema`: `{ key: { type, items,
 * default } }` with type one of string, number, integer, boolean, array, object (`items`: the
 * type of a list's items or a table's values). Every key is optional (a plugin must work with an
 * empty config): a missing one gets a copy of its `default`. Unknown keys are refused unless
 * `allowUnknown`.
 */
export function parseConfig(text, schema = {}, allowUnknown = false) {
  let table;
  try {
    table = JSON.parse(text || '{}');
  } catch (e) {
    throw new ConfigError(`config is not JSON: ${e.message}`);
  }
  if (!CHECKS.object(table)) throw new ConfigError('config must be a table');
  const known = Object.keys(schema);
  const unknown = Object.keys(table).filter((k) => !known.includes(k)).sort();
  if (unknown.length && !allowUnknown) {
    throw new ConfigError(known.length
      ? `unknown config key \`${unknown[0]}\` (known keys: ${[...known].sort().join(', ')})`
      : `unknown config key(s): ${unknown.join(', ')} (this plugin takes no config)`);
  }
  const config = allowUnknown ? { ...table } : {};
  for (const [key, spec] of Object.entries(schema)) {
    if (key in table) {
      checkValue(key, table[key], spec.type, spec.items);
      config[key] = table[key];
    } else {
      config[key] = structuredCloneish(spec.default);
    }
  }
  return config;
}

function structuredCloneish(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

// The plugin base class --------------------------------------------------------------------------

/**
 * Base class of a plugin: every hook answers "no opinion". Static fields: `pluginName` (the
 * name in the messages this SDK logs; default the class name), `config` (the schema for
 * `parseConfig`), `allowUnknownConfig`. `this.config` holds the parsed config when a hook runs;
 * override `configure()` to check more and throw `ConfigError` to refuse it.
 */
export class Plugin {
  configure() {}
  connect(conn) {}
  ehlo(conn, name) {}
  mailFrom(conn, sender, params) {}
  rcpt(conn, env, rcpt) {}
  data(conn, env, msg) {}
  deliver(conn, env) { return []; }
  delivered(report) {}
  deferred(report) {}
  bounced(report) {}
}

function pluginName(cls) {
  return cls.pluginName || cls.name;
}

function describe(e) {
  return (e && e.stack) ? `${e}\n${e.stack}` : String(e);
}

/** Logs an exception with the plugin's name and hook; never throws itself. */
export function reportException(name, hook, e) {
  const text = `${name}: exception in ${hook}: ${describe(e)}`;
  try {
    hostLog('error', text);
  } catch {
    // no host to log to; the exception still traps
  }
}

/** The object componentize-js exports for the `hooks` interface: `export const hooks =
 * exportPlugin(MyPlugin)`. */
export function exportPlugin(cls) {
  const name = pluginName(cls);
  let plugin = null;
  const wrap = (hook, convert) => (...args) => {
    try {
      return convert(plugin[hook](...args));
    } catch (e) {
      reportException(name, hook, e);
      throw e;
    }
  };
  return {
    init(config) {
      try {
        const p = new cls();
        p.config = parseConfig(config, cls.config ?? {}, cls.allowUnknownConfig ?? false);
        p.configure();
        plugin = p;
      } catch (e) {
        if (e instanceof ConfigError) throw `${name}: ${e.message}`;
        reportException(name, 'init', e);
        throw `${name}: init threw ${e}`;
      }
    },
    connect: wrap('connect', toVerdict),
    ehlo: wrap('ehlo', toVerdict),
    mailFrom: wrap('mailFrom', toOutcome),
    rcpt: wrap('rcpt', toOutcome),
    data: wrap('data', toOutcome),
    deliver: wrap('deliver', (routes) => [...(routes ?? [])]),
    delivered: wrap('delivered', () => undefined),
    deferred: wrap('deferred', () => undefined),
    bounced: wrap('bounced', () => undefined),
  };
}
