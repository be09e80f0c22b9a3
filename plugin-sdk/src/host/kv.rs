//! The plugin's persistent key-value namespace. Needs `grants = ["kv"]` in the server config;
//! calling any of these makes the component import `wasmtp:plugin/kv`.

#[cfg(not(fake_host))]
use crate::bindings::wasmtp::plugin::kv as wit;

/// Reads `key`; `None` when absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
    #[cfg(not(fake_host))]
    return wit::get(key);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.kv_get(key));
}

/// Reads `key` as UTF-8 text (invalid UTF-8 is replaced).
pub fn get_string(key: &str) -> Result<Option<String>, String> {
    Ok(get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Writes `key`; with `ttl_seconds` it expires that many seconds from now.
pub fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) -> Result<(), String> {
    #[cfg(not(fake_host))]
    return wit::set(key, value, ttl_seconds);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.kv_set(key, value.to_vec(), ttl_seconds));
}

/// Removes `key`.
pub fn delete(key: &str) -> Result<(), String> {
    #[cfg(not(fake_host))]
    return wit::delete(key);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.kv_delete(key));
}

/// Adds `delta` to the counter at `key` and returns the new value; `ttl_seconds` applies only
/// when this call creates the key (a fixed window).
pub fn incr(key: &str, delta: i64, ttl_seconds: Option<u32>) -> Result<i64, String> {
    #[cfg(not(fake_host))]
    return wit::incr(key, delta, ttl_seconds);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.kv_incr(key, delta, ttl_seconds));
}

/// What a plugin answers when a kv call fails, as a config value (`on_kv_error = "accept"` or
/// `"tempfail"`). With the server's kv on a shared Redis (`[kv] backend = "redis"`) a call can
/// fail because Redis is down or slow; the plugin decides whether mail flows on meanwhile.
#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
#[serde(rename_all = "lowercase")]
pub enum OnKvError {
    /// Fail open: let the client through (and log a warning).
    #[default]
    Accept,
    /// Fail closed: answer a temporary failure, so the client retries later.
    Tempfail,
}
