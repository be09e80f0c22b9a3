//! The slice of WASI that Rust std guests import only to report a panic: an empty environment
//! and no arguments (so the panic handler's `RUST_BACKTRACE` lookup answers "unset" instead of
//! trapping), no terminals, and stdout/stderr captured into a bounded per-call buffer that the
//! host logs with the plugin and hook. Everything else of these interfaces (stdin, exit, reads)
//! still traps: `define_unknown_imports_as_traps` fills in what is not defined here.
//!
//! Nothing here grants anything: no file, socket, clock or real environment is reachable.

use wasmtime::component::{
    Component, ComponentType, Lift, Linker, LinkerInstance, Lower, Resource, ResourceType,
};
use wasmtime::{Engine, StoreContextMut};

use super::host::HostState;

/// Bytes of guest stdout/stderr kept per call; the rest is counted and dropped.
pub const OUTPUT_LIMIT: usize = 4096;

/// What a guest wrote to stdout or stderr during one call, bounded by [`OUTPUT_LIMIT`].
#[derive(Debug, Default)]
pub struct Output {
    buf: Vec<u8>,
    dropped: usize,
}

impl Output {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.buf.len());
        let keep = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..keep]);
        self.dropped += bytes.len() - keep;
    }

    /// Empties the buffer; None if nothing was written.
    pub fn take(&mut self) -> Option<String> {
        if self.buf.is_empty() && self.dropped == 0 {
            return None;
        }
        let mut text = String::from_utf8_lossy(&self.buf).trim().to_string();
        if self.dropped > 0 {
            text.push_str(&format!(" [{} more bytes dropped]", self.dropped));
        }
        self.buf.clear();
        self.dropped = 0;
        Some(text)
    }
}

struct OutputStream;
struct InputStream;
struct Pollable;
struct IoError;
struct TerminalOutput;
struct TerminalInput;

/// `wasi:io/streams.stream-error`. Never returned: writes always succeed (excess is dropped).
#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

type Ctx<'a> = StoreContextMut<'a, HostState>;
type Wrote = wasmtime::Result<(Result<(), StreamError>,)>;

/// Defines the stdio/environment subset for the WASI interfaces `component` imports, at the
/// versions it imports.
pub(crate) fn link(
    linker: &mut Linker<HostState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    for (import, _) in component.component_type().imports(engine) {
        let base = import.split('@').next().unwrap_or(import);
        if !base.starts_with("wasi:io/") && !base.starts_with("wasi:cli/") {
            continue;
        }
        let mut i = linker.instance(import)?;
        match base {
            "wasi:io/error" => resource::<IoError>(&mut i, "error")?,
            "wasi:io/poll" => poll(&mut i)?,
            "wasi:io/streams" => streams(&mut i)?,
            "wasi:cli/environment" => {
                i.func_wrap("get-environment", |_: Ctx, (): ()| {
                    Ok((Vec::<(String, String)>::new(),))
                })?;
                i.func_wrap("get-arguments", |_: Ctx, (): ()| {
                    Ok((Vec::<String>::new(),))
                })?;
                i.func_wrap("initial-cwd", |_: Ctx, (): ()| Ok((None::<String>,)))?;
            }
            // An interface that `use`s a resource re-exports it: each instance names the
            // same host type, or the component's types do not line up.
            "wasi:cli/stdin" => resource::<InputStream>(&mut i, "input-stream")?,
            "wasi:cli/stdout" => {
                resource::<OutputStream>(&mut i, "output-stream")?;
                i.func_wrap("get-stdout", |_: Ctx, (): ()| {
                    Ok((Resource::<OutputStream>::new_own(1),))
                })?
            }
            "wasi:cli/stderr" => {
                resource::<OutputStream>(&mut i, "output-stream")?;
                i.func_wrap("get-stderr", |_: Ctx, (): ()| {
                    Ok((Resource::<OutputStream>::new_own(2),))
                })?
            }
            "wasi:cli/terminal-output" => resource::<TerminalOutput>(&mut i, "terminal-output")?,
            "wasi:cli/terminal-input" => resource::<TerminalInput>(&mut i, "terminal-input")?,
            "wasi:cli/terminal-stdout" => {
                resource::<TerminalOutput>(&mut i, "terminal-output")?;
                i.func_wrap("get-terminal-stdout", |_: Ctx, (): ()| {
                    Ok((None::<Resource<TerminalOutput>>,))
                })?
            }
            "wasi:cli/terminal-stderr" => {
                resource::<TerminalOutput>(&mut i, "terminal-output")?;
                i.func_wrap("get-terminal-stderr", |_: Ctx, (): ()| {
                    Ok((None::<Resource<TerminalOutput>>,))
                })?
            }
            "wasi:cli/terminal-stdin" => {
                resource::<TerminalInput>(&mut i, "terminal-input")?;
                i.func_wrap("get-terminal-stdin", |_: Ctx, (): ()| {
                    Ok((None::<Resource<TerminalInput>>,))
                })?
            }
            _ => {}
        }
    }
    Ok(())
}

/// A host resource with nothing behind it (handles carry no state).
fn resource<T: 'static>(i: &mut LinkerInstance<'_, HostState>, name: &str) -> wasmtime::Result<()> {
    i.resource(name, ResourceType::host::<T>(), |_, _| Ok(()))
}

fn poll(i: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    resource::<Pollable>(i, "pollable")?;
    // Output streams are always writable, so every pollable is ready.
    i.func_wrap(
        "[method]pollable.ready",
        |_: Ctx, (_,): (Resource<Pollable>,)| Ok((true,)),
    )?;
    i.func_wrap(
        "[method]pollable.block",
        |_: Ctx, (_,): (Resource<Pollable>,)| Ok(()),
    )
}

fn streams(i: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    resource::<IoError>(i, "error")?;
    resource::<Pollable>(i, "pollable")?;
    resource::<InputStream>(i, "input-stream")?;
    resource::<OutputStream>(i, "output-stream")?;
    i.func_wrap(
        "[method]output-stream.check-write",
        |_: Ctx, (_,): (Resource<OutputStream>,)| {
            Ok((Ok::<u64, StreamError>(OUTPUT_LIMIT as u64),))
        },
    )?;
    let write = |mut cx: Ctx, (_, bytes): (Resource<OutputStream>, Vec<u8>)| -> Wrote {
        cx.data_mut().output.write(&bytes);
        Ok((Ok(()),))
    };
    i.func_wrap("[method]output-stream.write", write)?;
    i.func_wrap("[method]output-stream.blocking-write-and-flush", write)?;
    let flush = |_: Ctx, (_,): (Resource<OutputStream>,)| -> Wrote { Ok((Ok(()),)) };
    i.func_wrap("[method]output-stream.flush", flush)?;
    i.func_wrap("[method]output-stream.blocking-flush", flush)?;
    i.func_wrap(
        "[method]output-stream.subscribe",
        |_: Ctx, (_,): (Resource<OutputStream>,)| Ok((Resource::<Pollable>::new_own(0),)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_bounded_and_says_what_it_dropped() {
        let mut o = Output::default();
        assert_eq!(o.take(), None);
        o.write(b"panicked at x\n");
        assert_eq!(o.take().as_deref(), Some("panicked at x"));
        o.write(&vec![b'a'; OUTPUT_LIMIT + 10]);
        let t = o.take().unwrap();
        assert!(t.ends_with("[10 more bytes dropped]"), "{t}");
        assert_eq!(o.take(), None);
    }
}
