//! The SMTP protocol as data: command parsing, reply values, addresses and
//! the DATA decoder. Nothing in here does I/O or knows about tokio; the
//! session feeds bytes in and writes the replies it gets back out.
//!
//! Keeping the protocol pure lets every edge case (over-long lines, bare LF,
//! odd parameters) be tested with a table of byte strings.

pub mod address;
pub mod command;
pub mod data;
pub mod reply;

pub use address::{Address, AddressError, Path};
pub use command::{Command, CommandError, MailParams, RcptParams, parse_command};
pub use data::{DataDecoder, DataError, DataEvent};
pub use reply::Reply;
