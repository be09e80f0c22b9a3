// The wall clock (grant "clock"). Import this module only when the plugin is built against the
// `plugin` world.
import * as host from 'wasmtp:plugin/clock@0.2.0';

/** Milliseconds since the Unix epoch, as a BigInt. */
export const now = () => host.now();
