// header-rewrite: a wasmtp plugin written in JavaScript on the SDK in sdk/js (componentize-js),
// built against the `plugin-basic` world (log + notes only, no grants).
//
// At `data` it removes header fields that leak internals (`remove`), adds fixed ones (`add`),
// and tags mail from outside the organisation: the Subject of a message whose envelope sender's
// domain is not in `internal_domains` gets `external_subject_prefix` in front (once).
//
//   [[plugin]]
//   name = "header-rewrite"
//   path = "plugins/target/js/header_rewrite.wasm"
//
//   [plugin.config]
//   remove = ["X-Originating-IP", "User-Agent"]
//   add = { "X-Policy" = "checked" }
//   internal_domains = ["example.test"]
//   external_subject_prefix = "[EXT] "
import {
  ConfigError, Plugin, addHeader, changeHeader, domainOf, exportPlugin, log, notes, outcome, removeHeader,
} from './wasmtp-plugin/index.js';

export class HeaderRewrite extends Plugin {
  static pluginName = 'header-rewrite';
  static config = {
    remove: { type: 'array', items: 'string', default: [] },
    add: { type: 'object', items: 'string', default: {} },
    internal_domains: { type: 'array', items: 'string', default: [] },
    external_subject_prefix: { type: 'string', default: '' },
  };

  configure() {
    for (const name of [...this.config.remove, ...Object.keys(this.config.add)]) {
      if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) {
        throw new ConfigError(`config key \`remove\`/\`add\`: "${name}" is not a header field name`);
      }
    }
    this.internal = new Set(this.config.internal_domains.map((d) => d.toLowerCase()));
  }

  data(conn, env, msg) {
    const mods = [];
    for (const name of this.config.remove) {
      if (msg.header(name).length) mods.push(removeHeader(name));
    }
    for (const [name, value] of Object.entries(this.config.add)) mods.push(addHeader(name, value));
    const prefix = this.config.external_subject_prefix;
    const domain = domainOf(env.sender);
    if (prefix && !this.internal.has(domain)) {
      const subject = msg.header('Subject')[0] ?? '';
      if (!subject.startsWith(prefix.trim())) {
        mods.push(changeHeader('Subject', prefix + subject));
        notes.set('header-rewrite.external', domain || '<>');
        log.info(`header-rewrite: external sender ${env.sender || '<>'}, subject tagged`);
      }
    }
    return outcome({ mods });
  }
}

export const hooks = exportPlugin(HeaderRewrite);
