// {{name}}: a wasmtp policy plugin in JavaScript. At the data hook it adds a header field that
// records where the message came from (`X-{{name}}: from 192.0.2.1 helo mail.example.org`),
// unless the client authenticated and `skip_authenticated` is set. Start from here: every hook
// of `Plugin` defaults to "no opinion", so override only the ones you need (connect, ehlo,
// mailFrom, rcpt, data, deliver, delivered, deferred, bounced).
import { ConfigError, Plugin, addHeader, exportPlugin, outcome } from './wasmtp-plugin/index.js';

export class Tagger extends Plugin {
  static pluginName = '{{name}}';
  // The `[plugin.config]` table of the server config. Every key has a default, and an unknown
  // key refuses the plugin at load, so a typo cannot go unnoticed.
  static config = {
    header: { type: 'string', default: 'X-{{name}}' },
    skip_authenticated: { type: 'boolean', default: false },
  };

  // Runs once per instance after the config was parsed; a ConfigError refuses it.
  configure() {
    const { header } = this.config;
    if (!header || /[: ]/.test(header)) throw new ConfigError(`header "${header}" is not a field name`);
  }

  data(conn, env, msg) {
    if (this.config.skip_authenticated && conn.authenticated !== undefined) return undefined; // continue
    const helo = conn.helo ?? '(none)';
    return outcome({ mods: [addHeader(this.config.header, `from ${conn.peerIp} helo ${helo}`)] });
  }
}

// What componentize-js exports: the SDK's wrapper with defaults for every hook.
export const hooks = exportPlugin(Tagger);
