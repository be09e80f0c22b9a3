// `node --import ./wasmtp-plugin/register-fakes.js --test test/`: makes the `wasmtp:plugin/*`
// imports of the SDK and the plugin resolve to fakes that call the active FakeHost
// (testing.js), so a plugin's JavaScript runs under plain node.
import { register } from 'node:module';

register('./fake-loader.js', import.meta.url);
