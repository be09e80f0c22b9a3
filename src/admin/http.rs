//! Requests to answers. Routes:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200, or 503 with the reason |
//! | `GET /status` | JSON: listeners, uptime, plugin set, queue summary |
//! | `GET /queue?sender=&rcpt=&domain=&state=&older_than=&limit=` | JSON: the matching messages (the first `limit`, 1000 by default) and how many matched |
//! | `GET /queue/summary` | JSON: counts by domain and state |
//! | `GET /queue/ID` | JSON: the message, its state and its header block |
//! | `POST /queue/ID/retry`, `/hold`, `/release`, `/bounce` | JSON: the ids changed |
//! | `POST /queue/retry?all=1` or `?domain=D` | JSON: the ids changed |
//! | `DELETE /queue/ID` | JSON: the ids changed |
//!
//! Errors are JSON `{"error": "..."}` with 400, 401, 404, 405 or 503.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{AdminState, Conn};
use crate::queue::control::{Answer, Command, ControlError, Entry, Filter, State, Summary, Target};

type Resp = Response<Full<Bytes>>;

/// Serves one connection (keep-alive allowed).
pub(super) async fn connection(io: Conn, state: Arc<AdminState>) {
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Resp {
    if !authorized(state, &req) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (admin.token)",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
        return r;
    }
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let path: Vec<&str> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (req.method(), path.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, ["readyz"]) => match not_ready(state) {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, ["metrics"]) => metrics(state).await,
        (&Method::GET, ["status"]) => status(state).await,
        (&Method::GET, ["queue"]) => list(state, &query).await,
        (&Method::GET, ["queue", "summary"]) => match summary(state).await {
            Ok(s) => ok_json(&s),
            Err(e) => control_error(e),
        },
        (&Method::POST, ["queue", "retry"]) => {
            let target = match (param(&query, "all"), param(&query, "domain")) {
                (Some(_), None) => Target::All,
                (None, Some(d)) => Target::Domain(d.to_string()),
                _ => return error(StatusCode::BAD_REQUEST, "give all=1 or domain=D"),
            };
            run(state, Command::Retry(target)).await
        }
        (&Method::GET, ["queue", id]) => show(state, id).await,
        (&Method::DELETE, ["queue", id]) => run(state, Command::Delete(id.to_string())).await,
        (&Method::POST, ["queue", id, action]) => {
            let id = id.to_string();
            let cmd = match *action {
                "retry" => Command::Retry(Target::Id(id)),
                "hold" => Command::Hold(id),
                "release" => Command::Release(id),
                "bounce" => Command::Bounce(id),
                _ => return error(StatusCode::NOT_FOUND, "no such action"),
            };
            run(state, cmd).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint (see docs/operations.md)",
        ),
    }
}

/// With a token configured, the request must carry it.
fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.settings.admin.token else {
        return true;
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared in full whatever the first difference, so timing does not
    // tell how much of a guess was right.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Why the server is not ready, if it is not.
fn not_ready(state: &AdminState) -> Option<String> {
    use std::sync::atomic::Ordering;
    if state.ready.stopping.load(Ordering::SeqCst) {
        return Some("shutting down".into());
    }
    if !state.ready.listeners_bound.load(Ordering::SeqCst) {
        return Some("SMTP listeners not bound yet".into());
    }
    if !state.queue.is_running() {
        return Some("queue manager stopped".into());
    }
    if state.plugins.current().generation == 0 {
        return Some("plugin set not loaded".into());
    }
    None
}

async fn metrics(state: &AdminState) -> Resp {
    let Some(handle) = &state.metrics else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder in this process",
        );
    };
    // Queue depth and the plugin generation are read now rather than kept
    // up to date on every change.
    if let Ok(s) = summary(state).await {
        for st in State::ALL {
            crate::metrics::queue_depth(st.as_str(), s.messages.get(&st).copied().unwrap_or(0));
        }
    }
    crate::metrics::plugin_generation(state.plugins.current().generation);
    crate::plugin::contract::record_loaded(&state.plugins.current());
    handle.run_upkeep();
    let mut r = text(StatusCode::OK, handle.render());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    r
}

async fn status(state: &AdminState) -> Resp {
    let set = state.plugins.current();
    let stats = state.plugins.stats_summary();
    let plugins: Vec<_> = set
        .plugins
        .iter()
        .map(|p| {
            let name = p.spec.name.as_str();
            let (calls, traps, timeouts) = stats
                .iter()
                .find(|s| s.0 == name)
                .map_or((0, 0, 0), |s| (s.1, s.2, s.3));
            let hooks: Vec<&str> = p.spec.hooks.iter().map(|h| h.as_str()).collect();
            json!({"name": name, "digest": p.digest(), "hooks": hooks,
                   "snapshot": p.snapshot(),
                   "calls": calls, "traps": traps, "timeouts": timeouts})
        })
        .collect();
    let listeners: Vec<_> = state
        .ready
        .listeners()
        .into_iter()
        .map(|(name, role, addr)| json!({"name": name, "role": role, "address": addr.to_string()}))
        .collect();
    let queue = match summary(state).await {
        Ok(s) => json!(s),
        Err(e) => json!({"error": e.to_string()}),
    };
    ok_json(&json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": state.settings.hostname,
        "config": state.settings.source,
        "pid": std::process::id(),
        "started_at": state.started_unix,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "ready": not_ready(state).is_none(),
        "not_ready": not_ready(state),
        "admin": state.bound.to_string(),
        "listeners": listeners,
        "plugins": {"generation": set.generation, "plugins": plugins},
        "queue": queue,
        "corrupt_records": state.store.corrupt_len(),
    }))
}

/// The answer of `GET /queue`.
#[derive(serde::Serialize)]
struct Listed<'a> {
    now: i64,
    messages: &'a [Entry],
    matched: usize,
}

/// Messages `GET /queue` returns unless the request sets `limit`.
const LIST_LIMIT: usize = 1000;

/// The matching messages, oldest first: the first `limit` of them, and how
/// many matched in all. Only those are held in memory.
async fn list(state: &AdminState, query: &[(String, String)]) -> Resp {
    let filter = match filter(query) {
        Ok(f) => f,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let limit = match param(query, "limit").map(str::parse::<usize>) {
        None => LIST_LIMIT,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit: expected a number of messages, at least 1",
            );
        }
    };
    let now = crate::queue::now_secs();
    let listed = each_entry(state, (Vec::new(), 0usize), move |(kept, matched), e| {
        if filter.matches(&e, now) {
            *matched += 1;
            if kept.len() < limit {
                kept.push(e);
            }
        }
    });
    match listed.await {
        // Serialized straight from the entries, not through a `json!` tree:
        // three listings of 30,000 messages took RSS 47 -> 388 MiB through
        // the tree, 66 -> 128 MiB without (release build).
        Ok((messages, matched)) => ok_json(&Listed {
            now,
            messages: &messages,
            matched,
        }),
        Err(e) => control_error(e),
    }
}

fn filter(query: &[(String, String)]) -> Result<Filter, String> {
    let state = match param(query, "state") {
        None => None,
        Some(s) => Some(
            State::parse(s)
                .ok_or_else(|| format!("state {s:?}: expected queued, active, deferred or held"))?,
        ),
    };
    let older_than = match param(query, "older_than") {
        None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("older_than {s:?}: expected seconds"))?,
        ),
    };
    Ok(Filter {
        sender: param(query, "sender").map(String::from),
        rcpt: param(query, "rcpt").map(String::from),
        domain: param(query, "domain").map(String::from),
        state,
        older_than,
    })
}

/// One message, read from the store by its id on the blocking pool.
async fn show(state: &AdminState, id: &str) -> Resp {
    let active = match in_delivery(state).await {
        Ok(ids) => ids,
        Err(e) => return control_error(e),
    };
    let (store, wanted) = (state.store.clone(), id.to_string());
    let found = tokio::task::spawn_blocking(move || {
        let Some(message) = store.get(&wanted)? else {
            return Err(ControlError::NoSuchMessage(wanted));
        };
        let headers = match store.body(&wanted) {
            Ok(Some(body)) => crate::queue::control::header_block(&body),
            _ => String::new(),
        };
        let state = State::seen(&message, &active);
        Ok((Entry { state, message }, headers))
    })
    .await
    .unwrap_or(Err(ControlError::Stopped));
    match found {
        Ok((entry, headers)) => {
            ok_json(&json!({"entry": entry, "headers": headers, "now": crate::queue::now_secs()}))
        }
        Err(e) => control_error(e),
    }
}

/// The queue counted by state and domain. Every scrape of `/metrics` asks
/// for this, so it neither holds the queue manager (only the ids in delivery
/// come from it) nor the whole queue in memory: the store is read on the
/// blocking pool, one envelope at a time. With 30,000 deferred messages a
/// scrape through a full snapshot took 51 MiB more RSS and held the manager
/// ~80 ms.
async fn summary(state: &AdminState) -> Result<Summary, ControlError> {
    each_entry(state, Summary::default(), |s, e| s.add(e.state, &e.message)).await
}

/// The ids a delivery worker has now (at most `queue.delivery_workers`):
/// the one thing about the queue only the queue manager knows.
async fn in_delivery(state: &AdminState) -> Result<Vec<String>, ControlError> {
    match state.queue.control(Command::InDelivery).await? {
        Answer::InDelivery(ids) => Ok(ids),
        Answer::Done(_) => Ok(Vec::new()),
    }
}

/// Folds every queued message, with its state, into `acc`: the store is
/// read on the blocking pool one envelope at a time, so neither the queue
/// manager is held nor the whole queue kept in memory.
async fn each_entry<T: Send + 'static>(
    state: &AdminState,
    acc: T,
    mut f: impl FnMut(&mut T, Entry) + Send + 'static,
) -> Result<T, ControlError> {
    let active = in_delivery(state).await?;
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut acc = acc;
        store.for_each(|message| {
            let state = State::seen(&message, &active);
            f(&mut acc, Entry { state, message });
            Ok(())
        })?;
        Ok(acc)
    })
    .await
    .map_err(|_| ControlError::Stopped)?
}

async fn run(state: &AdminState, cmd: Command) -> Resp {
    match state.queue.control(cmd).await {
        Ok(Answer::Done(ids)) => ok_json(&json!({"done": ids})),
        Ok(Answer::InDelivery(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
        Err(e) => control_error(e),
    }
}

fn control_error(e: ControlError) -> Resp {
    let status = match e {
        ControlError::NoSuchMessage(_) => StatusCode::NOT_FOUND,
        ControlError::Held(_) => StatusCode::CONFLICT,
        ControlError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ControlError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn text(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn ok_json(v: &impl serde::Serialize) -> Resp {
    let mut r = text(
        StatusCode::OK,
        serde_json::to_string(v).expect("answers serialize"),
    );
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Resp {
    let mut r = ok_json(&json!({ "error": message }));
    *r.status_mut() = status;
    r
}
