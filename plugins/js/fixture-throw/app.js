// fixture-throw: a test fixture, not an example. It throws at `mail-from` when the sender's local
// part is `throw`, so a test can check that the SDK logs the exception's message with the
// plugin's name before the call traps.
import { Plugin, exportPlugin } from './wasmtp-plugin/index.js';

function check(sender) {
  if (sender.split('@')[0] === 'throw') throw new Error(`fixture-throw: deliberate failure for ${sender}`);
}

export class FixtureThrow extends Plugin {
  static pluginName = 'fixture-throw';
  mailFrom(conn, sender) {
    check(sender);
  }
}

export const hooks = exportPlugin(FixtureThrow);
