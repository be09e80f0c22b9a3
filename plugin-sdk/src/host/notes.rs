//! Per-transaction notes shared by all plugins (always granted). Notes written at `connect` or
//! `ehlo` last for the session; notes written in a transaction end with it. By convention
//! `score.<plugin>` holds a decimal spam score that spam-score adds up.

#[cfg(not(fake_host))]
use crate::bindings::wasmtp::plugin::notes as wit;

/// The value of `key`, if set.
pub fn get(key: &str) -> Option<String> {
    #[cfg(not(fake_host))]
    return wit::get(key);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.notes.get(key).cloned());
}

/// Sets `key` to `value`.
pub fn set(key: &str, value: &str) {
    #[cfg(not(fake_host))]
    wit::set(key, value);
    #[cfg(fake_host)]
    crate::testing::with_state(|s| s.notes.insert(key.to_string(), value.to_string()));
}

/// Removes `key`.
pub fn remove(key: &str) {
    #[cfg(not(fake_host))]
    wit::remove(key);
    #[cfg(fake_host)]
    crate::testing::with_state(|s| s.notes.remove(key));
}

/// All notes whose key starts with `prefix`, sorted by key.
pub fn entries(prefix: &str) -> Vec<(String, String)> {
    #[cfg(not(fake_host))]
    return wit::entries(prefix);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| {
        s.notes
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
}
