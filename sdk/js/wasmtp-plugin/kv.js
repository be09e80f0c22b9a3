// The plugin's persistent key-value namespace (grant "kv"). Import this module only when the
// plugin is built against the `plugin` world (`build.sh --world plugin`). Failures throw the
// host's message.
import * as host from 'wasmtp:plugin/kv@0.2.0';

const enc = new TextEncoder();

/** The value as bytes (Uint8Array), or undefined when absent or expired. */
export const get = (key) => host.get(key);
/** The value as text, or undefined. */
export const getText = (key) => {
  const v = host.get(key);
  return v === undefined ? undefined : new TextDecoder().decode(v);
};
/** Writes bytes or text; `ttlSeconds` makes the key expire. */
export const set = (key, value, ttlSeconds) =>
  host.set(key, typeof value === 'string' ? enc.encode(value) : value, ttlSeconds);
/** Removes a key (no error when absent). */
export const remove = (key) => host['delete'](key);
/** Adds `delta` to the counter at `key` and returns the new value (a BigInt). */
export const incr = (key, delta = 1n, ttlSeconds) => host.incr(key, BigInt(delta), ttlSeconds);
