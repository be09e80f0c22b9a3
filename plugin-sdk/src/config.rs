//! The plugin's config table: the `[plugin.config]` TOML table of the server config, which the
//! host hands to `init` as JSON.

use serde::de::DeserializeOwned;

/// The plugin's own config table (`[plugin.config]` in the server config).
///
/// Deserialize it into a struct with [`Config::parse`]; mark fields `#[serde(default)]` so that an
/// empty config works.
#[derive(Debug, Clone, PartialEq)]
pub struct Config(serde_json::Value);

impl Config {
    /// An empty table (`{}`), what the host passes when the server config has none.
    pub fn empty() -> Self {
        Config(serde_json::Value::Object(Default::default()))
    }

    /// Parses the JSON text the host passes to `init`. An empty string counts as `{}`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::empty());
        }
        serde_json::from_str(text)
            .map(Config)
            .map_err(|e| format!("config is not valid JSON: {e}"))
    }

    /// Deserializes the table into `T`; the error names the offending key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.0.clone()).map_err(|e| format!("invalid plugin config: {e}"))
    }

    /// The table as a JSON value, for plugins that read it dynamically.
    pub fn as_json(&self) -> &serde_json::Value {
        &self.0
    }
}

impl From<serde_json::Value> for Config {
    fn from(value: serde_json::Value) -> Self {
        Config(value)
    }
}
