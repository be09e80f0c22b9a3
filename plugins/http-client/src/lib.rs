//! A small blocking HTTP client over the standard `wasi:http/outgoing-handler`, for plugins the
//! server grants `http` (`[[plugin]] http = { allowed_hosts = [...] }`). The host decides what
//! may be reached: a host outside the plugin's `allowed_hosts`, a request over its `max_calls`
//! or a response over its `max_response` comes back here as an `Err` naming the wasi-http error
//! code (`HttpRequestDenied`, `ConnectionLimitReached`, `HttpResponseBodySize`), never as a trap.
//!
//! Natively (the plugins' unit tests) every request fails: there is no host to send it.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};

/// A response: status, header fields (names lower-case), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Header fields as received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// The parts of an `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// True for https.
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Splits `url`; only http and https are accepted.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?}: expected an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?}: expected a host (no user info)"));
    }
    Ok(Url {
        https,
        authority: authority.to_string(),
        path,
    })
}

/// Bytes written to the request body per call (wasi:io's `blocking-write-and-flush` takes at
/// most 4096).
const WRITE_CHUNK: usize = 4096;

/// Sends one request and reads the whole response. `timeout_ms` bounds connecting and waiting
/// for the first response byte (the host's `timeout` bounds the whole request anyway).
pub fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: Option<u64>,
) -> Result<Response, String> {
    let u = parse_url(url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    let m = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "HEAD" => Method::Head,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    let scheme = if u.https { Scheme::Https } else { Scheme::Http };
    let invalid = |what: &str| format!("{url:?}: invalid {what}");
    req.set_method(&m).map_err(|()| invalid("method"))?;
    req.set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    req.set_authority(Some(&u.authority))
        .map_err(|()| invalid("authority"))?;
    req.set_path_with_query(Some(&u.path))
        .map_err(|()| invalid("path"))?;
    let out = req
        .body()
        .map_err(|()| "request body taken twice".to_string())?;
    let options = timeout_ms.map(|ms| {
        let o = RequestOptions::new();
        let ns = ms.saturating_mul(1_000_000);
        let _ = o.set_connect_timeout(Some(ns));
        let _ = o.set_first_byte_timeout(Some(ns));
        o
    });
    // Handle first, then stream the body: the host buffers little of it.
    let pending = outgoing_handler::handle(req, options).map_err(code)?;
    write_body(out, body)?;
    pending.subscribe().block();
    let resp = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(code(e)),
        Some(Err(())) | None => return Err("the response was already taken".into()),
    };
    let status = resp.status();
    let headers = resp.headers().entries();
    let incoming = resp
        .consume()
        .map_err(|()| "response body taken twice".to_string())?;
    let stream = incoming
        .stream()
        .map_err(|()| "response body stream taken twice".to_string())?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                return Err(match wasip2::http::types::http_error_code(&e) {
                    Some(c) => code(c),
                    None => format!("reading the response: {}", e.to_debug_string()),
                });
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: data,
    })
}

fn write_body(out: OutgoingBody, body: &[u8]) -> Result<(), String> {
    {
        let stream = out
            .write()
            .map_err(|()| "request body stream taken twice".to_string())?;
        for chunk in body.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the request body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(code)
}

/// The error a plugin logs: the wasi-http error code's name and payload.
fn code(e: ErrorCode) -> String {
    format!("{e:?}")
}

/// Milliseconds on the monotonic clock (for time budgets; not wall-clock time).
pub fn now_ms() -> u64 {
    wasip2::clocks::monotonic_clock::now() / 1_000_000
}

/// Waits `ms` milliseconds (the monotonic clock that comes with the `http` grant).
pub fn sleep_ms(ms: u64) {
    wasip2::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:11333/checkv2").unwrap(),
            Url {
                https: false,
                authority: "127.0.0.1:11333".into(),
                path: "/checkv2".into()
            }
        );
        let u = parse_url("https://hooks.example.net").unwrap();
        assert!(u.https && u.authority == "hooks.example.net" && u.path == "/");
        assert_eq!(parse_url("http://h?x=1").unwrap().path, "/?x=1");
        assert!(parse_url("ftp://h/").is_err());
        assert!(parse_url("http:///x").is_err());
        assert!(parse_url("http://user@h/").is_err());
    }
}
