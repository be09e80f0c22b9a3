// Lookups through the server's resolver (grant "dns"). Import this module only when the plugin
// is built against the `plugin` world. A failure throws the dns-error variant
// (`{ tag: 'not-found' }`, `{ tag: 'timeout' }`, ...).
import * as host from 'wasmtp:plugin/dns@0.2.0';

export const a = (name) => host.a(name);
export const aaaa = (name) => host.aaaa(name);
export const mx = (name) => host.mx(name);
export const txt = (name) => host.txt(name);
export const ptr = (ip) => host.ptr(ip);
