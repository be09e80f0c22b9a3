//! Delivery to other servers: the route each remote recipient takes
//! (a plugin's relay route, static routes, smarthost, MX) and the SMTP
//! client that carries the message there.
//!
//! The queue manager hands over every remote recipient of a message in one
//! call and gets one classified `Outcome` per recipient back.

pub mod config;
pub mod route;

use crate::delivery::Outcome;
use crate::queue::QueuedMessage;

/// Why remote recipients stay queued while no outbound path exists.
const NO_OUTBOUND: &str = "deferred: no outbound delivery configured";

/// The outbound side: shared by every delivery attempt (resolver,
/// connections kept for reuse, concurrency limits).
#[derive(Debug, Default)]
pub struct Outbound {}

impl Outbound {
    /// The outbound side for `settings`.
    pub fn new(_settings: &crate::config::Settings) -> Outbound {
        Outbound {}
    }

    /// Tries recipients `rcpts` of `msg` (all remote) once.
    pub async fn deliver(
        &self,
        _msg: &QueuedMessage,
        rcpts: &[usize],
        _body: &[u8],
    ) -> Vec<(usize, Outcome)> {
        rcpts
            .iter()
            .map(|&i| (i, Outcome::temporary("4.4.0", NO_OUTBOUND)))
            .collect()
    }
}
