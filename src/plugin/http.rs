//! The `http` capability: outgoing HTTP requests for plugins granted an
//! `http` table, exposed as the standard `wasi:http/outgoing-handler`
//! (wasmtime-wasi-http), so every language's wasi-http client works.
//!
//! Only a plugin with the grant gets these imports linked, together with
//! wasmtime-wasi's real WASI 0.2 implementation (wasi-http's bodies are its
//! streams and pollables) over a deny-all context: no files, no sockets,
//! no environment, stdout/stderr captured for the log as for every plugin.
//! Plugins without the grant keep the small hand-written slice in `wasi`.
//!
//! The host enforces the grant in [`WasiHttpHooks::send_request`], before
//! any socket is opened: scheme http or https, `host:port` in
//! `allowed_hosts`, at most `max_calls` requests per transaction; then a
//! deadline for the whole request (`timeout`: connect, TLS, response and
//! body) and a cap on the response body (`max_response`). A refusal is an
//! error the guest sees (`HTTP-request-denied`, `connection-limit-reached`,
//! `HTTP-response-body-size`), never a trap. Every request logs a line
//! (`plugin http call`) and counts in `wasmtp_plugin_http_calls_total`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::http::uri::Scheme;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::host::HostState;
use super::wasi::Output;
use crate::config::value::{ByteSize, Dur};
use crate::observe::{escape, limit_hit};

/// `[[plugin]] http = { ... }` (or `[plugin.http]`): the grant itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpGrant {
    /// `host`, `host:port` or `*.domain[:port]`; without a port, the scheme's (80, 443).
    pub allowed_hosts: Vec<String>,
    /// Deadline of one request: connect, TLS, response and body.
    pub timeout: Option<Dur>,
    /// Largest response body.
    pub max_response: Option<ByteSize>,
    /// Requests per transaction.
    pub max_calls: Option<u32>,
    /// Extra CA certificates (PEM) trusted for https besides the public roots.
    pub ca_file: Option<PathBuf>,
}

/// One `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// Lower-case host name or IP address (without brackets).
    host: String,
    /// `*.domain`: any name below `host`, not `host` itself.
    wildcard: bool,
    /// None: the scheme's default port.
    port: Option<u16>,
}

/// The `http` grant of one plugin, resolved.
pub struct HttpGrant {
    allowed: Vec<AllowedHost>,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Largest response body in bytes.
    pub max_response: u64,
    /// Requests per transaction.
    pub max_calls: u32,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HttpGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGrant")
            .field("allowed", &self.allowed)
            .field("timeout", &self.timeout)
            .field("max_response", &self.max_response)
            .field("max_calls", &self.max_calls)
            .finish_non_exhaustive()
    }
}

/// Default of `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `max_response`.
pub const DEFAULT_MAX_RESPONSE: u64 = 1 << 20;
/// Default of `max_calls`.
pub const DEFAULT_MAX_CALLS: u32 = 10;

/// Resolves the grant; errors are `(key under plugin.http, message)`.
pub fn resolve(raw: RawHttpGrant) -> Result<HttpGrant, (&'static str, String)> {
    if raw.allowed_hosts.is_empty() {
        return Err((
            "allowed_hosts",
            "must list at least one host (`host:port` or `*.domain`)".into(),
        ));
    }
    let allowed = raw
        .allowed_hosts
        .iter()
        .map(|h| parse_allowed(h).map_err(|e| ("allowed_hosts", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        return Err(("timeout", "must be greater than 0".into()));
    }
    let max_calls = raw.max_calls.unwrap_or(DEFAULT_MAX_CALLS);
    if max_calls == 0 {
        return Err(("max_calls", "must be at least 1".into()));
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &raw.ca_file {
        let fail = |what: String| ("ca_file", format!("{}: {what}", path.display()));
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| fail(format!("not a PEM certificate file ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| fail(format!("unusable certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(fail("no CERTIFICATE block found".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca_file", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(HttpGrant {
        allowed,
        timeout,
        max_response: raw.max_response.map_or(DEFAULT_MAX_RESPONSE, |b| b.0),
        max_calls,
        tls: Arc::new(tls),
    })
}

fn parse_allowed(entry: &str) -> Result<AllowedHost, String> {
    let bad = |why: &str| format!("{entry:?}: {why} (expected `host`, `host:port` or `*.domain`)");
    let e = entry.trim().to_ascii_lowercase();
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        // [v6] or [v6]:port
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("no closing `]`"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
        };
        (h.to_string(), port)
    } else if e.matches(':').count() > 1 {
        (e.clone(), None) // a bare IPv6 address
    } else {
        match e.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (e.clone(), None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))
        })
        .transpose()?;
    let (host, wildcard) = match host.strip_prefix("*.") {
        Some(d) => (d.to_string(), true),
        None => (host, false),
    };
    let host = host.trim_end_matches('.').to_string();
    let name_ok = host
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if host.is_empty()
        || host.contains('*')
        || !(name_ok || host.parse::<std::net::IpAddr>().is_ok() && !wildcard)
    {
        return Err(bad("not a host name or IP address"));
    }
    Ok(AllowedHost {
        host,
        wildcard,
        port,
    })
}

impl HttpGrant {
    /// True if `host` (as in the URL, brackets around IPv6 allowed) and `port` are listed;
    /// `default_port` is the scheme's, which an entry without a port means.
    pub fn allows(&self, host: &str, port: u16, default_port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.allowed.iter().any(|a| {
            let name = if a.wildcard {
                host.strip_suffix(&a.host)
                    .is_some_and(|below| below.len() > 1 && below.ends_with('.'))
            } else {
                host == a.host
            };
            name && a.port.unwrap_or(default_port) == port
        })
    }
}

/// What an instance of a plugin with the grant carries: the WASI context
/// wasmtime-wasi's implementation needs (deny-all, stdio captured), the
/// wasi-http context, and the hooks that enforce the grant.
pub(crate) struct HttpState {
    wasi: WasiCtx,
    ctx: WasiHttpCtx,
    hooks: Hooks,
    output: Arc<Mutex<Output>>,
}

impl HttpState {
    pub(crate) fn new(plugin: Arc<str>, grant: Arc<HttpGrant>) -> HttpState {
        let output = Arc::new(Mutex::new(Output::default()));
        // Nothing but captured stdout/stderr: no preopens, no environment,
        // sockets and name lookups denied (wasmtime-wasi's defaults).
        let wasi = WasiCtx::builder()
            .stdout(Capture(output.clone()))
            .stderr(Capture(output.clone()))
            .build();
        HttpState {
            wasi,
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                plugin,
                grant,
                calls: 0,
            },
            output,
        }
    }

    /// What the guest wrote to stdout/stderr since the last call.
    pub(crate) fn take_output(&mut self) -> Option<String> {
        self.output.lock().expect("output lock").take()
    }

    /// A new transaction: the per-transaction call count starts again.
    pub(crate) fn begin_transaction(&mut self) {
        self.hooks.calls = 0;
    }
}

/// The slot's state, created with an empty allow-list if the store has
/// none (the imports are only linked for plugins with the grant, so that
/// does not happen; if it did, every request would be refused).
fn state<'a>(slot: &'a mut Option<Box<HttpState>>, plugin: &Arc<str>) -> &'a mut HttpState {
    slot.get_or_insert_with(|| {
        let grant = HttpGrant {
            allowed: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_response: 0,
            max_calls: 0,
            tls: Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
        };
        Box::new(HttpState::new(plugin.clone(), Arc::new(grant)))
    })
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let h = state(&mut self.http, &self.plugin);
        WasiCtxView {
            ctx: &mut h.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let h = state(&mut self.http, &self.plugin);
        WasiHttpCtxView {
            hooks: &mut h.hooks,
            table: &mut self.table,
            ctx: &mut h.ctx,
        }
    }
}

/// Links wasmtime-wasi's WASI 0.2 and `wasi:http` (types, outgoing-handler)
/// for a plugin granted `http`. The import check before compiling already
/// refused every other WASI interface (files, sockets), so the real
/// implementation behind this linker only serves io, stdio, the monotonic
/// clock and random numbers.
pub(crate) fn link(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// Guest stdout/stderr into the instance's bounded output buffer.
struct Capture(Arc<Mutex<Output>>);

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Capture(self.0.clone()))
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().expect("output lock").write(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The grant's enforcement, one per instance.
struct Hooks {
    plugin: Arc<str>,
    grant: Arc<HttpGrant>,
    /// Requests made in this transaction.
    calls: u32,
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Box<dyn Future<Output = Result<(Response<WasiBody>, IoFuture), Error>> + Send>;

/// A refusal the guest sees as the error of its request.
fn refused(e: Error) -> Sent {
    Box::new(async move { Err(e) })
}

impl WasiHttpHooks for Hooks {
    /// A certificate that does not verify is `TLS-certificate-error`, not a protocol error, so
    /// the plugin's log says what to fix (`ca_file`).
    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        let certificate = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
        if certificate {
            ErrorCode::TlsCertificateError
        } else {
            ErrorCode::TlsProtocolError
        }
    }

    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _: IoFuture,
    ) -> Sent {
        let plugin = self.plugin.clone();
        let method = request.method().to_string();
        let uri = request.uri();
        let url = escape(&format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str()),
            uri.path()
        ));
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => {
                warn!(plugin = %plugin, method, url, "plugin http call refused: only http and https");
                crate::metrics::plugin_http_call(&plugin, "denied");
                return refused(Error::HttpRequestDenied);
            }
        };
        let default_port = if https { 443 } else { 80 };
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(default_port);
        if !self.grant.allows(&host, port, default_port) {
            warn!(plugin = %plugin, method, url, "plugin http call refused: host not in allowed_hosts (key plugin.http.allowed_hosts)");
            crate::metrics::plugin_http_call(&plugin, "denied");
            return refused(Error::HttpRequestDenied);
        }
        if self.calls >= self.grant.max_calls {
            limit_hit(
                "plugin.http.max_calls",
                &format!(
                    "plugin {plugin}: more than {} http requests in one transaction",
                    self.grant.max_calls
                ),
            );
            crate::metrics::plugin_http_call(&plugin, "limit");
            return refused(Error::ConnectionLimitReached);
        }
        self.calls += 1;
        let grant = self.grant.clone();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Box::new(async move {
            let started = Instant::now();
            let deadline = tokio::time::Instant::now() + grant.timeout;
            let connect_by = options
                .and_then(|o| o.connect_timeout)
                .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
            let target = Target {
                host,
                port,
                https,
                deadline,
                connect_by,
            };
            let sent = send(request, &grant, &plugin, target).await;
            let ms = started.elapsed().as_millis() as u64;
            match &sent {
                Ok(resp) => {
                    crate::metrics::plugin_http_call(&plugin, "ok");
                    info!(plugin = %plugin, method, url, status = resp.status().as_u16(), ms, "plugin http call");
                }
                Err(e) => {
                    let outcome = match e {
                        Error::ConnectionTimeout | Error::HttpResponseTimeout => "timeout",
                        Error::HttpResponseBodySize(_) => "too-large",
                        _ => "error",
                    };
                    crate::metrics::plugin_http_call(&plugin, outcome);
                    warn!(plugin = %plugin, method, url, ms, outcome, error = %escape(&format!("{e:?}")), "plugin http call failed");
                }
            }
            sent.map(|r| (r, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// Where one request goes and by when it must be done.
struct Target {
    host: String,
    port: u16,
    https: bool,
    deadline: tokio::time::Instant,
    connect_by: tokio::time::Instant,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Connects (TLS for https), sends `req` over HTTP/1.1 and returns the
/// response with its body capped and bound to the deadline.
async fn send(
    mut req: Request<WasiBody>,
    grant: &HttpGrant,
    plugin: &Arc<str>,
    t: Target,
) -> Result<Response<WasiBody>, Error> {
    let tcp = tokio::time::timeout_at(
        t.connect_by,
        tokio::net::TcpStream::connect((t.host.as_str(), t.port)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Connect)?;
    let stream: Box<dyn Stream> = if t.https {
        let name =
            ServerName::try_from(t.host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?;
        let tls = tokio_rustls::TlsConnector::from(grant.tls.clone()).connect(name, tcp);
        Box::new(
            tokio::time::timeout_at(t.connect_by, tls)
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?,
        )
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout_at(
        t.deadline,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The connection lives until the body is read or the deadline passes.
    tokio::spawn(tokio::time::timeout_at(t.deadline, conn));
    // Origin form on the wire: the authority went into the Host header.
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let resp = match tokio::time::timeout_at(t.deadline, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp,
        // The connection task above ends at the same deadline and may
        // close the connection first: that is the timeout too, not a
        // protocol error.
        Ok(Err(_)) | Err(_) if tokio::time::Instant::now() >= t.deadline => {
            return Err(Error::HttpResponseTimeout);
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(Error::HttpResponseTimeout),
    };
    let max = grant.max_response;
    let declared = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        over_cap(plugin, max);
        return Err(Error::HttpResponseBodySize(declared));
    }
    Ok(resp.map(|body| {
        Capped {
            body,
            left: max,
            max,
            deadline: Box::pin(tokio::time::sleep_until(t.deadline)),
            plugin: plugin.clone(),
        }
        .boxed_unsync()
    }))
}

fn over_cap(plugin: &str, max: u64) {
    limit_hit(
        "plugin.http.max_response",
        &format!("plugin {plugin}: an http response body is over {max} bytes"),
    );
}

/// A response body that fails past `max` bytes or after the deadline.
struct Capped {
    body: hyper::body::Incoming,
    left: u64,
    max: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    plugin: Arc<str>,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > this.left {
                    this.left = 0;
                    over_cap(&this.plugin, this.max);
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.max)))));
                }
                this.left -= n;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::HttpResponseTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(hosts: &[&str]) -> HttpGrant {
        resolve(RawHttpGrant {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            timeout: None,
            max_response: None,
            max_calls: None,
            ca_file: None,
        })
        .expect("grant")
    }

    #[test]
    fn allowed_hosts_match_names_wildcards_and_ports() {
        let g = grant(&[
            "rspamd.local:11333",
            "*.Example.net",
            "127.0.0.1:8080",
            "[::1]:9000",
        ]);
        assert!(g.allows("rspamd.local", 11333, 80));
        assert!(g.allows("RSPAMD.local.", 11333, 80));
        assert!(!g.allows("rspamd.local", 80, 80));
        assert!(!g.allows("evil-rspamd.local", 11333, 80));
        // A wildcard matches names below the domain, at the scheme's port.
        assert!(g.allows("api.example.net", 443, 443));
        assert!(g.allows("a.b.example.net", 80, 80));
        assert!(!g.allows("example.net", 443, 443));
        assert!(!g.allows("badexample.net", 443, 443));
        assert!(!g.allows("api.example.net", 8443, 443));
        assert!(g.allows("127.0.0.1", 8080, 80));
        assert!(!g.allows("127.0.0.2", 8080, 80));
        assert!(g.allows("[::1]", 9000, 80));
    }

    #[test]
    fn bad_grants_name_the_key() {
        for (hosts, key) in [
            (vec![], "allowed_hosts"),
            (vec!["*"], "allowed_hosts"),
            (vec!["a.*.net"], "allowed_hosts"),
            (vec!["host:port"], "allowed_hosts"),
            (vec!["http://x"], "allowed_hosts"),
        ] {
            let r = resolve(RawHttpGrant {
                allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
                timeout: None,
                max_response: None,
                max_calls: None,
                ca_file: None,
            });
            assert_eq!(r.err().map(|e| e.0), Some(key), "{hosts:?}");
        }
        let r = resolve(RawHttpGrant {
            allowed_hosts: vec!["x".into()],
            timeout: None,
            max_response: None,
            max_calls: None,
            ca_file: Some("/nonexistent/ca.pem".into()),
        });
        let (key, msg) = r.expect_err("missing CA file");
        assert_eq!(key, "ca_file");
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    }
}
