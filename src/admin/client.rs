//! The CLI's side of the admin endpoint: one HTTP/1.1 request over TCP or
//! the Unix socket, found from the same config file the server runs on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};

use super::{AdminAddr, addr_file};
use crate::config::Settings;

/// How long the CLI waits for the server (a bounce waits for a flush).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `[admin] listen` is off in this config.
    #[error("the admin endpoint is off in {0}: set [admin] listen (docs/operations.md)")]
    Disabled(String),
    /// Nothing answered.
    #[error("cannot reach the admin endpoint at {addr}: is wasmtp running? ({detail})")]
    Unreachable {
        /// Where the CLI looked.
        addr: String,
        /// The connection or protocol error.
        detail: String,
    },
    /// 401: the token is missing or wrong.
    #[error(
        "the admin endpoint at {0} refused the request: the token in admin.token/admin.token_file does not match the server's"
    )]
    Unauthorized(String),
}

/// An answer: status and body.
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (JSON, or text for /metrics, /healthz, /readyz).
    pub body: Bytes,
}

impl Answer {
    /// The `error` field of a JSON error body, or the body as text.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string())
    }
}

/// Where the running server's endpoint is: the configured address, or
/// for port 0 the one it wrote to `<data_dir>/admin.addr` at start.
pub fn endpoint(settings: &Settings) -> Result<AdminAddr, ClientError> {
    match &settings.admin.listen {
        None => Err(ClientError::Disabled(settings.source.clone())),
        Some(AdminAddr::Tcp(a)) if a.port() == 0 => {
            let file = addr_file(&settings.data_dir);
            let text = std::fs::read_to_string(&file).map_err(|e| ClientError::Unreachable {
                addr: format!("{a} (port chosen at start, read from {})", file.display()),
                detail: e.to_string(),
            })?;
            AdminAddr::parse(text.trim()).map_err(|detail| ClientError::Unreachable {
                addr: file.display().to_string(),
                detail,
            })
        }
        Some(a) => Ok(a.clone()),
    }
}

/// Sends `method path_and_query` with the configured token.
pub async fn request(
    settings: &Settings,
    method: Method,
    path_and_query: &str,
) -> Result<Answer, ClientError> {
    let addr = endpoint(settings)?;
    let unreachable = |detail: String| ClientError::Unreachable {
        addr: addr.to_string(),
        detail,
    };
    let send = async {
        let io: Box<dyn super::Io> = match &addr {
            AdminAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
            AdminAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, host(&addr));
        if let Some(t) = &settings.admin.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok::<_, std::io::Error>(Answer { status, body })
    };
    let answer = tokio::time::timeout(TIMEOUT, send)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    if answer.status == StatusCode::UNAUTHORIZED {
        return Err(ClientError::Unauthorized(addr.to_string()));
    }
    Ok(answer)
}

fn host(addr: &AdminAddr) -> String {
    match addr {
        AdminAddr::Tcp(a) => a.to_string(),
        AdminAddr::Unix(_) => "localhost".into(),
    }
}

/// Percent-encodes a query string from pairs.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}
