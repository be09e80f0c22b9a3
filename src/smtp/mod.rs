//! The SMTP protocol as data: command parsing, reply values, addresses and
//! the DATA decoder; for the outbound client, reply parsing and EHLO
//! capabilities (`response`) and the commands it sends (`request`).
//! Nothing in here does I/O or knows about tokio; the session and the
//! client feed bytes in and write what they get back out.
//!
//! Keeping the protocol pure lets every edge case (over-long lines, bare LF,
//! odd parameters) be tested with a table of byte strings.

pub mod address;
pub mod command;
pub mod data;
pub mod reply;
pub mod request;
pub mod response;

pub use address::{Address, AddressError, Path};
pub use command::{Command, CommandError, MailParams, RcptParams, parse_command};
pub use data::{DataDecoder, DataError, DataEvent};
pub use reply::Reply;
