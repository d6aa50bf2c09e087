//! Gnocchi's REST API v1 (the part clients use) over the embedded store, plus Prometheus
//! metrics, served by `meterflow serve` and `meterflow run --listen` while the dataflow runs.
//!
//! ```text
//!  HTTP (tokio, axum) ──GET──> Store's catalog and Parquet files (committed checkpoints)
//!                     ──POST measures──> validated, then an IngestRequest over a bounded
//!                        channel to worker 0, which feeds them into the Aggregate operator as
//!                        one epoch; 202 once that epoch's checkpoint is committed
//! ```
//! Aodh's v2 alarm API (`/v2/alarms`, in `api/alarms.rs`) works the same way: changes go to the
//! workers as one epoch and are answered once committed.
//!
//! Reads see what the store has committed; an accepted POST is committed before it is
//! answered, so a read after a 202 sees it (Gnocchi's `refresh=true` holds without asking).
//! Errors have Gnocchi's shape: `{"code": 404, "title": "Not Found", "description": ...}`.

mod aggregates;
mod alarms;
mod complex_query;
mod page;
mod resources;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meterflow_connectors::gnocchi::store::{MetricRecord, ResourceView, Store};
use meterflow_connectors::gnocchi::{canonical_uuid, is_standalone, resource_uuid, STANDALONE};
use meterflow_connectors::notify::ActionPolicy;
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Counters, DropReason};
use meterflow_engine::partition::route;
use meterflow_engine::time::{Instant, TimeError};
use meterflow_operators::aggregate::parse_timespan;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

pub use crate::control::{AlarmRequest, IngestRequest, ListenOptions, Live, Requests};
use crate::plan::Plan;
use crate::query::{self, MeasuresQuery, QueryError};
use crate::storage::{Measure, Origin};

/// Parses `--listen`: `HOST:PORT`, `:PORT` or `PORT`; the host defaults to 127.0.0.1.
///
/// # Examples
/// ```
/// use meterflow_pipelines::api::listen_addr;
/// assert_eq!(listen_addr("8041").unwrap().to_string(), "127.0.0.1:8041");
/// assert_eq!(listen_addr(":0").unwrap().to_string(), "127.0.0.1:0");
/// assert_eq!(listen_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
/// assert!(listen_addr("localhost").is_err());
/// ```
pub fn listen_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    let full = match text.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None if text.parse::<u16>().is_ok() => format!("127.0.0.1:{text}"),
        None => text.to_owned(),
    };
    full.parse().with_context(|| {
        format!(
            "--listen {text:?} is not an address; give HOST:PORT (e.g. 127.0.0.1:8041) or a port"
        )
    })
}

/// Reads a token file: a token a line, optionally followed by what it may do — `admin` (the
/// default), `read-only`, or `project=ID` — blank lines and `#` comments skipped; a file
/// without a token, or a line that is not of that form, is refused naming the line.
///
/// # Examples
/// ```
/// use meterflow_pipelines::control::Access;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("tokens");
/// std::fs::write(&path, "s3cret\n# Grafana\nr3ader read-only\nt3nant project=p1\n").unwrap();
/// let tokens = meterflow_pipelines::api::read_tokens(&path).unwrap();
/// assert_eq!(tokens[0].access, Access::Admin);
/// assert_eq!(tokens[1].access, Access::ReadOnly);
/// assert_eq!(tokens[2].access, Access::Project("p1".into()));
/// std::fs::write(&path, "s3cret writer\n").unwrap();
/// assert!(meterflow_pipelines::api::read_tokens(&path).is_err());
/// ```
pub fn read_tokens(path: &std::path::Path) -> anyhow::Result<Vec<crate::control::Token>> {
    use crate::control::{Access, Token};
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --token-file {}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let secret = words.next().unwrap_or_default().to_owned();
        let access = match (words.next(), words.next()) {
            (None, _) | (Some("admin"), None) => Access::Admin,
            (Some("read-only"), None) => Access::ReadOnly,
            (Some(p), None) if p.starts_with("project=") && p.len() > "project=".len() => {
                Access::Project(p["project=".len()..].to_owned())
            }
            _ => anyhow::bail!(
                "--token-file {} line {}: expected TOKEN [admin|read-only|project=ID]",
                path.display(),
                n + 1
            ),
        };
        tokens.push(Token { secret, access });
    }
    if tokens.is_empty() {
        anyhow::bail!(
            "--token-file {} holds no token; write one a line (TOKEN [admin|read-only|project=ID])",
            path.display()
        );
    }
    Ok(tokens)
}

/// A running API server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `options.addr` and starts serving on a thread of its own; POSTed measures and
    /// alarm changes arrive on the returned receivers. SIGINT and SIGTERM call [`Live::stop`].
    pub fn start(
        options: &ListenOptions,
        store: Arc<Store>,
        plan: Arc<Plan>,
        live: Arc<Live>,
        actions: ActionPolicy,
    ) -> anyhow::Result<(Server, Requests)> {
        let addr = listen_addr(&options.addr)?;
        if !addr.ip().is_loopback() && options.tokens.is_empty() {
            if !options.allow_open {
                anyhow::bail!(
                    "--listen {addr} serves beyond this machine without a token: anyone who reaches it can post measures and change alarms. Give --token-file FILE, listen on 127.0.0.1, or pass --allow-open if a proxy in front authenticates"
                );
            }
            tracing::warn!("serving {addr} without a token (--allow-open): anyone who reaches it can post measures and change alarms");
        }
        let limits = options.limits;
        let listener = TcpListener::bind(addr).with_context(|| {
            format!("cannot listen on {addr}; is another server using the port? pick another with --listen")
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let (alarm_tx, alarm_rx) = mpsc::channel(64);
        let stop_store = store.clone();
        let state = Arc::new(ApiState {
            store,
            plan,
            live: live.clone(),
            ingest: tx,
            alarms: alarm_tx,
            alarm_writes: tokio::sync::Mutex::new(()),
            resource_writes: tokio::sync::Mutex::new(()),
            tokens: options.tokens.clone(),
            actions,
            quotas: options.quotas,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("meterflow-api")
            .enable_all()
            .build()
            .context("cannot start the API's runtime")?;
        let thread = std::thread::Builder::new()
            .name("meterflow-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::spawn(stop_on_signals(live, stop_store));
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("API listener: {e}");
                            return;
                        }
                    };
                    let app = router(state).layer(
                        tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout),
                    );
                    // `/v1/metric/` is `/v1/metric` and `/v1/archive_policy//x` is
                    // `/v1/archive_policy/x` (the OpenStack clients write both); this must
                    // wrap the router, as it changes the path routing sees.
                    let app = tower::util::MapRequest::new(
                        tower_http::normalize_path::NormalizePath::trim_trailing_slash(app),
                        collapse_slashes as fn(HyperRequest) -> HyperRequest,
                    );
                    serve(listener, app, limits, stopped).await;
                });
            })
            .context("cannot start the API thread")?;
        Ok((
            Server {
                addr,
                stop: Some(stop),
                thread: Some(thread),
            },
            Requests {
                measures: rx,
                alarms: alarm_rx,
            },
        ))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, finishes the ones in flight, and waits.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn stop_on_signals(live: Arc<Live>, store: Arc<Store>) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    let _ = interrupt.await;
                    live.stop();
                    store.stop_waiting_for_space();
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::warn!("asked to stop: finishing what was accepted, then writing the last checkpoint");
    live.stop();
    // A commit waiting for space would hold the stop forever: it fails instead (what it held
    // was never acknowledged).
    store.stop_waiting_for_space();
}

/// The router behind the path normalisation the clients need.
type App = tower::util::MapRequest<
    tower_http::normalize_path::NormalizePath<Router>,
    fn(HyperRequest) -> HyperRequest,
>;

/// A request as hyper hands it over.
type HyperRequest = axum::http::Request<hyper::body::Incoming>;

/// Runs of `/` in a request's path become one, as Gnocchi's and Aodh's servers take them.
fn collapse_slashes<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let uri = request.uri();
    if !uri.path().contains("//") {
        return request;
    }
    let mut path = String::with_capacity(uri.path().len());
    for c in uri.path().chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    let rebuilt = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Ok(p) = rebuilt.parse::<axum::http::uri::PathAndQuery>() {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(p);
        if let Ok(u) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = u;
        }
    }
    request
}

/// Accepts connections until `stopped`, each served on a task of its own under `limits`,
/// then lets the ones in flight finish.
async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    limits: crate::control::ServerLimits,
    mut stopped: oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or the like: wait, do not spin.
                    tracing::warn!("API: cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "API: {} connections are open, the --max-connections limit; closing the one from {peer} ({refused} closed so far)",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("API connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
}

struct ApiState {
    store: Arc<Store>,
    plan: Arc<Plan>,
    live: Arc<Live>,
    ingest: mpsc::Sender<IngestRequest>,
    alarms: mpsc::Sender<AlarmRequest>,
    /// Alarm changes are made one at a time (names stay unique, a PUT sees the last one).
    alarm_writes: tokio::sync::Mutex<()>,
    /// Resource and resource type changes are made one at a time (an id is created once).
    resource_writes: tokio::sync::Mutex<()>,
    tokens: Vec<crate::control::Token>,
    /// The rules an alarm's actions must follow.
    actions: ActionPolicy,
    /// What one project may own.
    quotas: crate::control::Quotas,
}

type Shared = State<Arc<ApiState>>;

fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route(
            "/v1/archive_policy",
            get(archive_policies).post(create_archive_policy),
        )
        .route(
            "/v1/archive_policy/{name}",
            get(archive_policy)
                .patch(update_archive_policy)
                .delete(delete_archive_policy),
        )
        .route(
            "/v1/archive_policy_rule",
            get(archive_policy_rules).post(create_archive_policy_rule),
        )
        .route(
            "/v1/archive_policy_rule/{name}",
            get(archive_policy_rule)
                .patch(rename_archive_policy_rule)
                .delete(delete_archive_policy_rule),
        )
        .route(
            "/v1/resource_type",
            get(resources::list_types).post(resources::create_type),
        )
        .route(
            "/v1/resource_type/{name}",
            get(resources::show_type)
                .patch(resources::patch_type)
                .delete(resources::delete_type),
        )
        .route(
            "/v1/resource/{kind}",
            get(list_resources_of_type)
                .post(resources::create_resource)
                .delete(resources::batch_delete),
        )
        .route(
            "/v1/resource/{kind}/{id}",
            get(resource)
                .patch(resources::patch_resource)
                .delete(resources::delete_resource),
        )
        .route("/v1/resource/{kind}/{id}/history", get(resources::history))
        .route(
            "/v1/resource/{kind}/{id}/metric",
            get(resource_metrics).post(create_resource_metrics),
        )
        .route(
            "/v1/resource/{kind}/{id}/metric/{name}",
            get(show_resource_metric).delete(resources::delete_resource_metric),
        )
        .route(
            "/v1/resource/{kind}/{id}/metric/{name}/measures",
            get(resource_measures).post(post_resource_measures),
        )
        .route("/v1/metric", get(metrics).post(create_metric))
        .route(
            "/v1/search/resource/{kind}",
            axum::routing::post(search_resources),
        )
        .route(
            "/v1/metric/{id}",
            get(metric).delete(resources::delete_metric),
        )
        .route(
            "/v1/metric/{id}/measures",
            get(metric_measures).post(post_metric_measures),
        )
        .route(
            "/v1/batch/resources/metrics/measures",
            axum::routing::post(post_batch_resources),
        )
        .route(
            "/v1/batch/metrics/measures",
            axum::routing::post(post_batch_metrics),
        )
        .route("/v1/status", get(status))
        .route("/v1/capabilities", get(capabilities))
        .route("/metrics", get(prometheus))
        .merge(alarms::routes())
        .merge(aggregates::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthcheck", get(|| async { StatusCode::OK }))
        .route("/", get(versions))
        .merge(api)
        .with_state(state)
        .layer(axum::middleware::from_fn(finish))
}

/// The most a request body may hold (every route's; axum's extractors' default).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// Around every request: reads its whole body first (bounded by [`MAX_BODY`] and
/// `--body-timeout`), so any answer, an early error included, leaves the connection usable
/// for the next request; gives every error the body its API's clients parse (Gnocchi's under
/// `/v1`, Aodh's under `/v2`), also for the router's own bodiless answers (405); and tags
/// every answer with an `X-Openstack-Request-Id`, as OpenStack services do (the clients
/// print it with errors).
async fn finish(request: Request, next: Next) -> Response {
    let aodh = request.uri().path().starts_with("/v2");
    // Kept for a 405's message (cheap clones: no text is written unless it is needed).
    let what = (request.method().clone(), request.uri().clone());
    let (parts, body) = request.into_parts();
    let mut response = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => {
            let response = next
                .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await;
            if response.status().is_client_error() || response.status().is_server_error() {
                shape_error(response, aodh, &what).await
            } else {
                response
            }
        }
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let mut response = if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("The request body is over {MAX_BODY} bytes, the most meterflow takes; send the measures in smaller batches"),
                )
            } else {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("The request body could not be read in time ({e}); send it whole within the server's --body-timeout"),
                )
            }
            .into_response();
            // What is left of the body is never read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            if aodh {
                response = shape_error(response, aodh, &what).await;
            }
            response
        }
    };
    if let Ok(id) = HeaderValue::from_str(&format!(
        "req-{}",
        meterflow_connectors::gnocchi::random_uuid()
    )) {
        response.headers_mut().insert(
            header::HeaderName::from_static("x-openstack-request-id"),
            id,
        );
    }
    response
}

/// An error answer in the shape its API's clients parse: Gnocchi's `{"code", "title",
/// "description"}` or Aodh's `{"error_message": {"faultcode", "faultstring", "debuginfo"}}`,
/// keeping the status and headers; a bodiless or plain-text answer's text becomes the message.
async fn shape_error(
    response: Response,
    aodh: bool,
    (method, uri): &(axum::http::Method, axum::http::Uri),
) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let parsed: Option<Value> = json.then(|| serde_json::from_slice(&bytes).ok()).flatten();
    let message: Value = match &parsed {
        Some(v) if !aodh && v.get("description").is_some() => {
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        }
        Some(v) if aodh && v.get("error_message").is_some() => {
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        }
        Some(v) => v.get("description").cloned().unwrap_or_else(|| v.clone()),
        None => {
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            if !text.is_empty() {
                text.into()
            } else if parts.status == StatusCode::METHOD_NOT_ALLOWED {
                format!("The method is not allowed for this resource: {method} {} (the Allow header lists those that are)", uri.path()).into()
            } else {
                parts.status.canonical_reason().unwrap_or("Error").into()
            }
        }
    };
    let status = parts.status;
    let body = if aodh {
        let text = match message {
            Value::String(s) => s,
            other => other.to_string(),
        };
        json!({"error_message": {
            "faultcode": if status.is_client_error() { "Client" } else { "Server" },
            "faultstring": text,
            "debuginfo": null,
        }})
    } else {
        json!({
            "code": status.as_u16(),
            "title": status.canonical_reason().unwrap_or(""),
            "description": message,
        })
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// `GET /`: the API versions served, in the list form keystoneauth's discovery reads:
/// Gnocchi's v1 and Aodh's v2.
async fn versions(headers: axum::http::HeaderMap) -> Json<Value> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    Json(json!({"versions": [
        {"id": "v1.0", "status": "CURRENT", "updated": "2015-03-19",
         "links": [{"rel": "self", "href": format!("http://{host}/v1/")}]},
        {"id": "v2", "status": "stable", "updated": "2013-02-13T00:00:00Z",
         "media-types": [{"base": "application/json", "type": "application/vnd.openstack.telemetry-v2+json"}],
         "links": [{"rel": "self", "href": format!("http://{host}/v2")}]},
    ]}))
}

/// `GET /v1/status`: Gnocchi's processing status. Measures are aggregated before a POST is
/// answered, so none ever wait to be processed; the processors are the workers.
async fn status(State(state): Shared) -> Json<Value> {
    let processors: Vec<String> = (0..state.live.worker_count())
        .map(|w| format!("meterflow-worker-{w}"))
        .collect();
    Json(json!({
        "storage": {"summary": {"metrics": 0, "measures": 0}},
        "metricd": {"processors": processors, "statistics": {}},
    }))
}

/// `GET /v1/capabilities`: the aggregation methods an archive policy may name (each also as
/// `rate:`), sorted as Gnocchi lists them (Gnocchi 4 lists nothing else).
async fn capabilities() -> Json<Value> {
    let mut methods: Vec<String> = meterflow_operators::aggregate::Method::all_plain()
        .iter()
        .map(|m| m.to_string())
        .collect();
    methods.extend(methods.clone().iter().map(|m| format!("rate:{m}")));
    methods.sort();
    Json(json!({"aggregation_methods": methods}))
}

/// An error as Gnocchi answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    description: Value,
}

impl ApiError {
    fn new(status: StatusCode, description: impl Into<Value>) -> ApiError {
        ApiError {
            status,
            description: description.into(),
        }
    }

    fn bad_request(description: impl Into<Value>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, description)
    }

    fn not_found(description: impl Into<Value>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, description)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string())
    }
}

impl From<meterflow_connectors::gnocchi::store::StoreError> for ApiError {
    fn from(e: meterflow_connectors::gnocchi::store::StoreError) -> ApiError {
        ApiError::from(QueryError::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "code": self.status.as_u16(),
            "title": self.status.canonical_reason().unwrap_or(""),
            "description": self.description,
        });
        let mut response = (self.status, Json(body)).into_response();
        retry_later(&mut response);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "The resource could not be found: {} {} is not part of meterflow's API (Gnocchi's v1 and Aodh's v2 alarms; see the README for the routes served)",
        request.method(),
        request.uri().path()
    ))
}

async fn auth(State(state): Shared, request: Request, next: Next) -> Response {
    use crate::control::Access;
    let mut scope = caller_scope(request.headers());
    if !state.tokens.is_empty() {
        let header_text = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        // `Authorization: Bearer`, or `X-Auth-Token` as keystoneauth's token plugins (the
        // openstack, gnocchi and aodh CLIs with --os-token) send it.
        let given = header_text(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| header_text(header::HeaderName::from_static("x-auth-token")))
            .map(str::trim);
        // Every token is compared, so the time taken does not tell which one matched.
        let matched = given.and_then(|g| {
            state.tokens.iter().fold(None, |found, t| {
                let same = constant_time_eq(g.as_bytes(), t.secret.as_bytes());
                found.or(same.then_some(t))
            })
        });
        let Some(token) = matched else {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "This server requires a token: send the header 'Authorization: Bearer <token>' or 'X-Auth-Token: <token>' with a token from the server's --token-file",
            )
            .into_response();
        };
        match &token.access {
            Access::Admin => {}
            Access::ReadOnly => {
                if !reads_only(request.method(), request.uri().path()) {
                    return ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "Access was denied to this resource: the token is read-only ({} {} changes data); use a token without read-only in --token-file",
                            request.method(),
                            request.uri().path()
                        ),
                    )
                    .into_response();
                }
            }
            Access::Project(project) => scope = Some(project.clone()),
        }
    }
    SCOPE.scope(scope, next.run(request)).await
}

/// Whether a request only reads: `GET`/`HEAD`, and the `POST`s that search, query or
/// aggregate.
fn reads_only(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    let path = path.trim_end_matches('/');
    *method == Method::GET
        || *method == Method::HEAD
        || (*method == Method::POST
            && (path.starts_with("/v1/search/")
                || path.starts_with("/v1/aggregation/")
                || path == "/v1/aggregates"
                || path.starts_with("/v2/query/")))
}

tokio::task_local! {
    /// The project a caller without the admin role is limited to, for the request being
    /// answered (set by [`auth`]).
    static SCOPE: Option<String>;
}

/// The project a caller is limited to: with `X-Roles` naming no `admin` role (what Gnocchi's
/// and Aodh's noauth modes read), its `X-Project-Id` (none: it sees only what has no
/// project); without `X-Roles`, or with `admin`, none (a token holder, or an admin, sees
/// everything).
fn caller_scope(headers: &axum::http::HeaderMap) -> Option<String> {
    let roles = headers.get("x-roles")?.to_str().ok()?;
    if roles
        .split(',')
        .any(|r| r.trim().eq_ignore_ascii_case("admin"))
    {
        return None;
    }
    Some(project_of(headers).unwrap_or_default())
}

/// Whether the request being answered may see what belongs to `project`.
fn in_scope(project: Option<&str>) -> bool {
    SCOPE
        .try_with(|scope| {
            scope
                .as_deref()
                .is_none_or(|s| project.unwrap_or_default() == s)
        })
        .unwrap_or(true)
}

/// Whether the request being answered is limited to a project.
fn scoped() -> bool {
    SCOPE.try_with(Option::is_some).unwrap_or(false)
}

/// Gnocchi's answer to a caller outside the project of what it asks for.
fn forbidden() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "Access was denied to this resource.")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every archive policy the API knows: the store's (which includes the built-ins and the
/// definition's once a run opened it) and the definition's, as Gnocchi's API shows them
/// (durations as `0:05:00`).
fn policies(state: &ApiState) -> BTreeMap<String, Value> {
    let mut all = state.store.archive_policies();
    for p in &state.plan.archive_policies {
        all.entry(p.name.clone()).or_insert_with(|| p.to_json());
    }
    for v in all.values_mut() {
        if let Ok(p) = meterflow_operators::aggregate::ArchivePolicy::from_json(v) {
            *v = p.to_api_json();
        }
    }
    all
}

async fn archive_policies(State(state): Shared) -> Json<Value> {
    Json(Value::Array(policies(&state).into_values().collect()))
}

async fn archive_policy(State(state): Shared, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    policies(&state)
        .remove(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("Archive policy {name} does not exist")))
}

/// `POST /v1/archive_policy`: records a new policy in the store (201, as Gnocchi shows it); a
/// metric created afterwards may name it.
async fn create_archive_policy(
    State(state): Shared,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let policy = policy_body(&json_body(&body)?)?;
    if policies(&state).contains_key(&policy.name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Archive policy {} already exists", policy.name),
        ));
    }
    writable(&state)?;
    state
        .store
        .put_archive_policies([(policy.name.clone(), policy.to_json())])?;
    let location = format!("/v1/archive_policy/{}", policy.name);
    let mut response = (StatusCode::CREATED, Json(policy.to_api_json())).into_response();
    if let Ok(l) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, l);
    }
    Ok(response)
}

/// `PATCH /v1/archive_policy/NAME` with `{"definition": [...]}`: Gnocchi changes only the
/// points or timespan of the granularities a policy has; meterflow takes that while no metric
/// uses the policy (metrics in memory hold theirs).
async fn update_archive_policy(
    State(state): Shared,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    let current = recorded_policy(&state, &name)?;
    let Some(definition) = body
        .get("definition")
        .filter(|_| body.as_object().is_some_and(|o| o.len() == 1))
    else {
        return Err(ApiError::bad_request(
            "Invalid input: give only {\"definition\": [...]} (an archive policy's definition is all that can change)",
        ));
    };
    let mut changed = current.to_json();
    changed["definition"] = definition.clone();
    let changed = policy_body(&changed)?;
    let granularities = |p: &meterflow_operators::aggregate::ArchivePolicy| -> Vec<i64> {
        let mut g: Vec<i64> = p.definition.iter().map(|d| d.granularity).collect();
        g.sort_unstable();
        g
    };
    if granularities(&changed) != granularities(&current) {
        return Err(ApiError::bad_request(format!(
            "Archive policy {name} does not support change: Cannot add or drop granularities"
        )));
    }
    not_in_use(&state, &name, "changed")?;
    writable(&state)?;
    state
        .store
        .put_archive_policies([(name.clone(), changed.to_json())])?;
    Ok(Json(changed.to_api_json()))
}

/// `DELETE /v1/archive_policy/NAME`: forgets a policy no metric or rule uses (204).
async fn delete_archive_policy(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    recorded_policy(&state, &name)?;
    not_in_use(&state, &name, "deleted")?;
    writable(&state)?;
    state.store.remove_archive_policy(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// An archive policy from a request body, as Gnocchi's API takes it.
fn policy_body(body: &Value) -> ApiResult<meterflow_operators::aggregate::ArchivePolicy> {
    if !body.get("name").is_some_and(Value::is_string) {
        return Err(ApiError::bad_request(
            "Invalid input: required key not provided @ data['name']",
        ));
    }
    meterflow_operators::aggregate::ArchivePolicy::from_json(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid input: {e}")))
}

/// A policy the API may change: one the store recorded through the API (not the
/// definition's, not a built-in one, which come back at every start).
fn recorded_policy(
    state: &ApiState,
    name: &str,
) -> ApiResult<meterflow_operators::aggregate::ArchivePolicy> {
    if state.plan.archive_policies.iter().any(|p| p.name == name) {
        return Err(ApiError::bad_request(format!(
            "Archive policy {name} is defined in the engine's definition: change it there (archive_policies:)"
        )));
    }
    if meterflow_operators::aggregate::ArchivePolicy::builtin(name).is_some() {
        return Err(ApiError::bad_request(format!(
            "Archive policy {name} is built in: it is recorded again at every start, so it cannot be changed or deleted; create a policy of another name"
        )));
    }
    let stored = state.store.archive_policies();
    let json = stored
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("Archive policy {name} does not exist")))?;
    meterflow_operators::aggregate::ArchivePolicy::from_json(json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Refuses changing a policy a metric or a rule uses (Gnocchi's 400).
fn not_in_use(state: &ApiState, name: &str, what: &str) -> ApiResult<()> {
    let catalog = state.store.catalog()?;
    let used = catalog.metrics().any(|m| m.archive_policy_name == name)
        || rules(state).iter().any(|r| r.archive_policy_name == name);
    if used {
        return Err(ApiError::bad_request(format!(
            "Archive policy {name} is still in use: it cannot be {what} while a metric or an archive policy rule names it"
        )));
    }
    Ok(())
}

/// Refuses a write while the store's disk is full (503, retry later).
fn writable(state: &ApiState) -> ApiResult<()> {
    if !state.store.recheck_space() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, DISK_FULL));
    }
    Ok(())
}

/// Every archive policy rule: the definition's and those created through the API, in
/// Gnocchi's matching order.
fn rules(state: &ApiState) -> Vec<crate::plan::ArchivePolicyRule> {
    state.plan.rules_with(&state.store.archive_policy_rules())
}

fn rule_json(r: &crate::plan::ArchivePolicyRule) -> Value {
    json!({
        "name": r.name,
        "metric_pattern": r.metric_pattern,
        "archive_policy_name": r.archive_policy_name,
    })
}

async fn archive_policy_rules(State(state): Shared) -> Json<Value> {
    Json(Value::Array(rules(&state).iter().map(rule_json).collect()))
}

async fn archive_policy_rule(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    rules(&state)
        .iter()
        .find(|r| r.name == name)
        .map(|r| Json(rule_json(r)))
        .ok_or_else(|| ApiError::not_found(format!("Archive policy rule {name} does not exist")))
}

/// `POST /v1/archive_policy_rule`: a rule for metrics created afterwards without a policy
/// (201; 409 for a taken name, 400 for an unknown policy).
async fn create_archive_policy_rule(
    State(state): Shared,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let body = json_body(&body)?;
    let text = |k: &str| -> ApiResult<String> {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input: required key not provided @ data['{k}']"
                ))
            })
    };
    let (name, pattern, policy) = (
        text("name")?,
        text("metric_pattern")?,
        text("archive_policy_name")?,
    );
    if rules(&state).iter().any(|r| r.name == name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Archive policy rule {name} already exists"),
        ));
    }
    if !policies(&state).contains_key(&policy) {
        return Err(ApiError::bad_request(format!(
            "Archive policy {policy} does not exist"
        )));
    }
    writable(&state)?;
    let rule = json!({"name": name, "metric_pattern": pattern, "archive_policy_name": policy});
    state
        .store
        .set_archive_policy_rule(&name, Some(rule.clone()))?;
    let mut response = (StatusCode::CREATED, Json(rule)).into_response();
    if let Ok(l) = HeaderValue::from_str(&format!("/v1/archive_policy_rule/{name}")) {
        response.headers_mut().insert(header::LOCATION, l);
    }
    Ok(response)
}

/// A rule the API may change: one it created (the definition's are changed there).
fn api_rule(state: &ApiState, name: &str) -> ApiResult<Value> {
    if state
        .plan
        .archive_policy_rules
        .iter()
        .any(|r| r.name == name)
    {
        return Err(ApiError::bad_request(format!(
            "Archive policy rule {name} is defined in the engine's definition (or is its default rule, `*` to low, when it has none): change it there (archive_policy_rules:)"
        )));
    }
    state
        .store
        .archive_policy_rules()
        .remove(name)
        .ok_or_else(|| ApiError::not_found(format!("Archive policy rule {name} does not exist")))
}

/// `PATCH /v1/archive_policy_rule/NAME` with `{"name": NEW}`: renames a rule (all Gnocchi
/// lets change).
async fn rename_archive_policy_rule(
    State(state): Shared,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    let mut rule = api_rule(&state, &name)?;
    let Some(new) = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && body.as_object().is_some_and(|o| o.len() == 1))
    else {
        return Err(ApiError::bad_request(
            "Invalid input: give only {\"name\": NEW} (a rule's name is all that can change)",
        ));
    };
    if new != name && rules(&state).iter().any(|r| r.name == new) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Archive policy rule {new} already exists"),
        ));
    }
    writable(&state)?;
    rule["name"] = new.into();
    state.store.set_archive_policy_rule(&name, None)?;
    state
        .store
        .set_archive_policy_rule(new, Some(rule.clone()))?;
    Ok(Json(rule))
}

/// `DELETE /v1/archive_policy_rule/NAME` (204).
async fn delete_archive_policy_rule(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    api_rule(&state, &name)?;
    writable(&state)?;
    state.store.set_archive_policy_rule(&name, None)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A resource as Gnocchi shows it, with its `metrics` map.
fn resource_json(view: &ResourceView<'_>) -> Value {
    let by_name: serde_json::Map<String, Value> = view
        .metrics
        .iter()
        .map(|m| (m.metric_name.clone(), Value::from(m.metric_id.clone())))
        .collect();
    let mut resource = view.to_json();
    resource["metrics"] = Value::Object(by_name);
    resource
}

fn known_type(state: &ApiState, kind: &str, catalog_has: bool) -> ApiResult<()> {
    if kind == "generic" || catalog_has {
        return Ok(());
    }
    if resources::resource_types(state).contains_key(kind) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "Resource type {kind} does not exist"
        )))
    }
}

async fn list_resources_of_type(
    State(state): Shared,
    Path(kind): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    list_resources(&state, &kind, &params, &uri, None)
}

/// `POST /v1/search/resource/TYPE`: the resources of a type a filter selects, as the JSON
/// body (Gnocchi's filter) or the text of `?filter=` (what `gnocchi resource search` sends),
/// listed and paged as `GET /v1/resource/TYPE`; an empty body selects all.
async fn search_resources(
    State(state): Shared,
    Path(kind): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    use meterflow_connectors::gnocchi::search::Filter;
    let text = params.iter().find(|(k, _)| k == "filter").map(|(_, v)| v);
    let filter = match text {
        Some(text) => Filter::parse_text(text),
        None if body.iter().all(u8::is_ascii_whitespace) => Ok(Filter::And(Vec::new())),
        None => Filter::parse(&json_body(&body)?),
    }
    .map_err(|e| ApiError::bad_request(format!("Invalid input: {e}")))?;
    list_resources(&state, &kind, &params, &uri, Some(&filter))
}

/// The resources of `kind` that `filter` selects (all without one), paged by `params`.
fn list_resources(
    state: &ApiState,
    kind: &str,
    params: &[(String, String)],
    uri: &axum::http::Uri,
    filter: Option<&meterflow_connectors::gnocchi::search::Filter>,
) -> ApiResult<Response> {
    let page = query_page(params)?;
    // The generic listing shows generic attributes only, unless `details=true` (Gnocchi's;
    // gnocchiclient's table expects the same columns on every row).
    let details = params.iter().any(|(k, v)| {
        k == "details" && matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
    });
    let generic_only = kind == "generic" && !details;
    let catalog = state.store.catalog()?;
    let mut any_of_kind = false;
    let listed: Vec<(String, Value)> = catalog
        .resources()
        .iter()
        .filter(|view| {
            let of_kind = kind == "generic" || view.resource_type() == kind;
            any_of_kind |= of_kind;
            of_kind
        })
        .map(resource_json)
        .filter(|json| in_scope(json["project_id"].as_str()))
        .filter(|json| filter.is_none_or(|f| f.matches(json)))
        .map(|mut json| {
            if generic_only {
                if let Some(o) = json.as_object_mut() {
                    o.retain(|k, _| GENERIC_ATTRIBUTES.contains(&k.as_str()));
                }
            }
            (json["id"].as_str().unwrap_or_default().to_owned(), json)
        })
        .collect();
    known_type(state, kind, any_of_kind)?;
    page.respond(listed, uri).map_err(ApiError::bad_request)
}

/// The attributes every Gnocchi resource has (the `generic` type's).
const GENERIC_ATTRIBUTES: [&str; 13] = [
    "id",
    "type",
    "project_id",
    "user_id",
    "original_resource_id",
    "started_at",
    "ended_at",
    "revision_start",
    "revision_end",
    "creator",
    "created_by_user_id",
    "created_by_project_id",
    "metrics",
];

/// `limit` and `marker` from a query, as a 400 when they are not usable.
fn query_page(params: &[(String, String)]) -> ApiResult<page::Page> {
    page::Page::from_query(params).map_err(ApiError::bad_request)
}

/// The resource `id` names (UUID, key or id as sent) of type `kind`.
fn find_resource<'c>(
    catalog: &'c meterflow_connectors::gnocchi::store::Catalog,
    kind: &str,
    id: &str,
) -> ApiResult<ResourceView<'c>> {
    let view = catalog
        .resource(id)
        .and_then(|key| catalog.resource_view(key))
        .filter(|view| kind == "generic" || view.resource_type() == kind)
        .ok_or_else(|| ApiError::not_found(format!("Resource {id} does not exist")))?;
    if !in_scope(view.to_json()["project_id"].as_str()) {
        return Err(forbidden());
    }
    Ok(view)
}

async fn resource(
    State(state): Shared,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let catalog = state.store.catalog()?;
    Ok(Json(resource_json(&find_resource(&catalog, &kind, &id)?)))
}

async fn resource_metrics(
    State(state): Shared,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let catalog = state.store.catalog()?;
    let view = find_resource(&catalog, &kind, &id)?;
    Ok(Json(Value::Array(
        view.metrics.iter().map(|m| metric_json(m, None)).collect(),
    )))
}

/// `GET /v1/resource/TYPE/ID/metric/NAME`: one metric of a resource, as `GET /v1/metric/ID`
/// shows it (what `gnocchi metric show --resource-id` asks).
async fn show_resource_metric(
    State(state): Shared,
    Path((kind, id, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let record = resource_metric(&state, &kind, &id, &name)?;
    let policy = policies(&state).remove(&record.archive_policy_name);
    Ok(Json(metric_json(&record, policy)))
}

/// A metric as Gnocchi shows it; `policy` (its archive policy) is embedded when given.
fn metric_json(m: &MetricRecord, policy: Option<Value>) -> Value {
    let mut v = json!({
        "id": m.metric_id,
        "name": (!m.metric_name.is_empty()).then_some(m.metric_name.as_str()),
        "unit": (!m.unit.is_empty()).then_some(m.unit.as_str()),
        "archive_policy_name": m.archive_policy_name,
        "resource_id": (!is_standalone(&m.resource_id)).then(|| resource_uuid(&m.resource_id)),
        "creator": Value::Null,
        "created_by_user_id": Value::Null,
        "created_by_project_id": Value::Null,
    });
    if let Some(p) = policy {
        v["archive_policy"] = p;
    }
    v
}

async fn metrics(
    State(state): Shared,
    Query(params): Query<Vec<(String, String)>>,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    let page = query_page(&params)?;
    let catalog = state.store.catalog()?;
    // Gnocchi embeds each row's archive policy (gnocchiclient's `metric list` reads it).
    let known = policies(&state);
    let listed = catalog
        .metrics()
        .filter(|m| in_scope(m.project_id.as_deref()))
        .map(|m| {
            let policy = known.get(&m.archive_policy_name).cloned();
            (m.metric_id.clone(), metric_json(m, policy))
        })
        .collect();
    page.respond(listed, &uri).map_err(ApiError::bad_request)
}

fn metric_by_id(state: &ApiState, id: &str) -> ApiResult<MetricRecord> {
    let record = state
        .store
        .catalog()?
        .by_id(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Metric {id} does not exist")))?;
    if !in_scope(record.project_id.as_deref()) {
        return Err(forbidden());
    }
    Ok(record)
}

async fn metric(State(state): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let record = metric_by_id(&state, &id)?;
    let policy = policies(&state).remove(&record.archive_policy_name);
    Ok(Json(metric_json(&record, policy)))
}

/// `?aggregation=&granularity=&start=&stop=&resample=&refresh=` as Gnocchi takes them.
fn measures_query(params: &BTreeMap<String, String>) -> ApiResult<MeasuresQuery> {
    let timespan = |name: &str| -> ApiResult<Option<f64>> {
        params
            .get(name)
            .map(|text| {
                seconds(text).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid value for {name}: {text:?} is not a timespan; give seconds (300) or e.g. '5 minutes'"
                    ))
                })
            })
            .transpose()
    };
    let time = |name: &str| -> ApiResult<Option<i64>> {
        params
            .get(name)
            .map(|t| query::parse_time(t).map_err(ApiError::from))
            .transpose()
    };
    Ok(MeasuresQuery {
        aggregation: params.get("aggregation").cloned(),
        granularity: timespan("granularity")?,
        start: time("start")?,
        stop: time("stop")?,
        resample: timespan("resample")?,
        ..MeasuresQuery::default()
    })
}

/// Seconds from a number or a timespan (Gnocchi's forms); `None` when not finite.
fn seconds(text: &str) -> Option<f64> {
    parse_timespan(text).filter(|v| v.is_finite())
}

async fn metric_measures(
    State(state): Shared,
    Path(id): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let record = metric_by_id(&state, &id)?;
    let q = measures_query(&params)?;
    let points = query::measures_of(&state.store, &record, &q)?;
    Ok(Json(query::to_json(&points)))
}

async fn resource_measures(
    State(state): Shared,
    Path((kind, id, name)): Path<(String, String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let record = resource_metric(&state, &kind, &id, &name)?;
    let q = measures_query(&params)?;
    let points = query::measures_of(&state.store, &record, &q)?;
    Ok(Json(query::to_json(&points)))
}

fn resource_metric(state: &ApiState, kind: &str, id: &str, name: &str) -> ApiResult<MetricRecord> {
    let catalog = state.store.catalog()?;
    find_resource(&catalog, kind, id)?
        .metrics
        .into_iter()
        .find(|m| m.metric_name == name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Metric {name} does not exist")))
}

/// One metric's measures in a POST, after validation.
struct Incoming {
    resource_key: String,
    metric: String,
    unit: Option<String>,
    policy: Option<String>,
    points: Vec<(i64, f64)>,
    /// The project creating it (`X-Project-Id`), recorded on a new metric.
    project: Option<String>,
    /// Whether the request creates the metric (made even when `points` is empty).
    create: bool,
}

/// Parses a list of `{"timestamp": T, "value": V}`; `place` names it in errors. As in
/// Gnocchi, the first timestamp decides how all are read: numbers (or numeric strings) are
/// epoch seconds, anything else ISO 8601.
fn parse_measures(list: &Value, place: &str) -> ApiResult<Vec<(i64, f64)>> {
    let items = list.as_array().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input: {place}: expected a list of {{\"timestamp\": ..., \"value\": ...}}"
        ))
    })?;
    let numeric = |v: &Value| match v {
        Value::Number(_) => true,
        Value::String(s) => s.trim().parse::<f64>().is_ok(),
        _ => false,
    };
    let epoch = items
        .first()
        .and_then(|m| m.get("timestamp"))
        .is_some_and(numeric);
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = |what: &str| format!("Invalid input: {place}[{i}]: {what}");
        let ts = m
            .get("timestamp")
            .ok_or_else(|| ApiError::bad_request(at("has no \"timestamp\"")))?;
        let value = m
            .get("value")
            .ok_or_else(|| ApiError::bad_request(at("has no \"value\"")))?;
        let checked = match (epoch, ts) {
            (true, Value::Number(n)) => n.as_f64().map(Instant::from_seconds),
            (true, Value::String(s)) => s.trim().parse::<f64>().ok().map(Instant::from_seconds),
            (false, Value::String(s)) => relative_time(s).or_else(|| Some(query::parse_instant(s))),
            _ => None,
        };
        let ns = match checked {
            Some(Ok(t)) => t.nanos(),
            Some(Err(why)) if why != TimeError::Malformed => {
                return Err(ApiError::bad_request(at(&format!("timestamp {ts} {why}"))))
            }
            _ => return Err(ApiError::bad_request(at(&format!(
                "timestamp {ts} is not a valid timestamp (the first measure's timestamp decides: epoch seconds, or ISO 8601 such as 2021-07-30T02:00:00+00:00)"
            )))),
        };
        if ns < 0 {
            return Err(ApiError::bad_request(at(&format!(
                "timestamp {ts} is before 1970 (Timestamp must be after Epoch)"
            ))));
        }
        let v = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            ApiError::bad_request(at(&format!("value {value} is not a finite number")))
        })?;
        out.push((ns, v));
    }
    Ok(out)
}

/// `now`, `-5 minutes`, `+1 hour`: relative to the wall clock (`None`: not of that form).
fn relative_time(text: &str) -> Option<Result<Instant, TimeError>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let now = now.as_secs_f64();
    let text = text.trim();
    if text == "now" {
        return Some(Instant::from_seconds(now));
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'-' => (-1.0, &text[1..]),
        b'+' => (1.0, &text[1..]),
        _ => return None,
    };
    let span = seconds(rest)?;
    Some(Instant::from_seconds(now + sign * span))
}

/// A resource id as a batch names it: UUIDs in canonical form, other text as sent.
fn batch_resource_key(id: &str) -> ApiResult<String> {
    if id.contains('/') {
        return Err(ApiError::bad_request(format!(
            "Invalid input: resource id {id:?}: '/' is not supported in resource id (Ceilometer replaces it with '_')"
        )));
    }
    if id.is_empty() || id.len() > 289 {
        return Err(ApiError::bad_request(format!(
            "Invalid input: resource id {id:?} must be 1 to 289 characters"
        )));
    }
    // A UUID in any form Gnocchi accepts names the resource in canonical form.
    Ok(canonical_uuid(id).unwrap_or_else(|| id.to_owned()))
}

/// A batch of measures per resource and metric (`POST /v1/batch/resources/metrics/measures`),
/// checked as Gnocchi checks it before any metric is looked up.
fn parse_batch(body: &Value) -> ApiResult<Vec<Incoming>> {
    let resources = body.as_object().ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input: expected {\"<resource id>\": {\"<metric name>\": [measures] or {\"measures\": [...], \"archive_policy_name\": ..., \"unit\": ...}}}",
        )
    })?;
    let mut incoming = Vec::new();
    for (rid, metrics) in resources {
        let key = batch_resource_key(rid)?;
        let metrics = metrics.as_object().ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input: resource {rid}: expected an object of metric name → measures"
            ))
        })?;
        for (name, entry) in metrics {
            let place = format!("{rid}/{name}");
            if name.is_empty() || name.contains('/') {
                return Err(ApiError::bad_request(format!(
                    "Invalid input: metric name {name:?} of resource {rid} must be non-empty and without '/'"
                )));
            }
            let (list, policy, unit) = match entry {
                Value::Array(_) => (entry, None, None),
                Value::Object(o) => {
                    let list = o.get("measures").ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "Invalid input: {place}: an object entry needs \"measures\""
                        ))
                    })?;
                    let text = |k: &str| -> ApiResult<Option<String>> {
                        match o.get(k) {
                            None | Some(Value::Null) => Ok(None),
                            Some(Value::String(s)) => Ok(Some(s.clone())),
                            Some(other) => Err(ApiError::bad_request(format!(
                                "Invalid input: {place}: {k} must be a string, not {other}"
                            ))),
                        }
                    };
                    (list, text("archive_policy_name")?, text("unit")?)
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input: {place}: expected a list of measures or an object with \"measures\""
                    )))
                }
            };
            if unit.as_ref().is_some_and(|u| u.chars().count() > 31) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input: {place}: unit is longer than 31 characters"
                )));
            }
            incoming.push(Incoming {
                resource_key: key.clone(),
                metric: name.clone(),
                unit,
                policy,
                points: parse_measures(list, &place)?,
                project: None,
                create: false,
            });
        }
    }
    Ok(incoming)
}

/// Reads an Aodh complex query body as `POST /v2/query/alarms` does and applies it to a few
/// alarms' JSON, returning how many match or the 400's text (for the fuzz harness).
pub fn check_complex_query(body: &[u8]) -> Result<usize, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let query = complex_query::ComplexQuery::parse(&value, &complex_query::ALARM)?;
    let rows = vec![
        json!({"name": "cpu_high", "state": "alarm", "severity": "low", "enabled": true,
               "timestamp": "2024-05-01T12:00:00+00:00", "project_id": null}),
        json!({"name": "cpu_low", "state": "ok", "severity": "critical", "enabled": false,
               "timestamp": "2024-05-02T00:00:00+00:00", "threshold": 4.5}),
    ];
    Ok(query.apply(rows).len())
}

/// Reads a `POST /v1/search/metric` body as the API does and applies it to a few values,
/// returning how many it accepts or the 400's text (for the fuzz harness).
pub fn check_value_query(body: &[u8]) -> Result<usize, String> {
    aggregates::check_value_query(body)
}

/// Checks a batch body as the API does, returning how many measures it holds or the 400's
/// text (for the fuzz harness: every body is answered, none panics or hangs).
pub fn check_batch_body(body: &[u8]) -> Result<usize, String> {
    let incoming = json_body(body)
        .and_then(|b| parse_batch(&b))
        .map_err(|e| e.description.to_string())?;
    Ok(incoming.iter().map(|m| m.points.len()).sum())
}

/// The project a request acts for: its `X-Project-Id`, or `None`.
fn project_of(headers: &axum::http::HeaderMap) -> Option<String> {
    caller(headers, "x-project-id")
}

/// The user a request acts for: its `X-User-Id`, or `None`.
fn user_of(headers: &axum::http::HeaderMap) -> Option<String> {
    caller(headers, "x-user-id")
}

/// One of the caller's identity headers (what noauth clients and a proxy in front send).
fn caller(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
}

/// Refuses creating `new_metrics` metrics on `new_resources` resources for `project` when
/// it would own more than its quotas.
fn check_quotas(
    state: &ApiState,
    catalog: &meterflow_connectors::gnocchi::store::Catalog,
    project: Option<&str>,
    (new_metrics, new_resources): (usize, usize),
) -> ApiResult<()> {
    if new_metrics == 0 {
        return Ok(());
    }
    // The catalog lists metrics by resource, so a resource's metrics come together.
    let mut resources: Vec<&str> = Vec::new();
    let mut metrics = 0;
    for m in catalog
        .metrics()
        .filter(|m| m.project_id.as_deref() == project)
    {
        metrics += 1;
        if resources.last() != Some(&m.resource_id.as_str()) {
            resources.push(&m.resource_id);
        }
    }
    let who = project.map_or("without X-Project-Id".to_owned(), |p| p.to_string());
    let quotas = state.quotas;
    let exceeded = |what: &str, have: usize, adding: usize, quota: usize, flag: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Quota exceeded for {what}: project {who} owns {have}, this request would add {adding}, the quota is {quota}; delete some, or ask the operator to raise --{flag}"),
        )
    };
    if metrics + new_metrics > quotas.metrics {
        return Err(exceeded(
            "metrics",
            metrics,
            new_metrics,
            quotas.metrics,
            "quota-metrics",
        ));
    }
    if resources.len() + new_resources > quotas.resources {
        let have = resources.len();
        return Err(exceeded(
            "resources",
            have,
            new_resources,
            quotas.resources,
            "quota-resources",
        ));
    }
    Ok(())
}

async fn post_batch_resources(
    State(state): Shared,
    Query(params): Query<BTreeMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let create = params
        .get("create_metrics")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let mut incoming = parse_batch(&json_body(&body)?)?;
    let catalog = state.store.catalog()?;
    let known = policies(&state);
    let rules = rules(&state);
    let mut unknown = Vec::new();
    // What this request would create, for the quotas.
    let (mut created, mut new_resources) = (0, std::collections::BTreeSet::new());
    for m in &mut incoming {
        if catalog.get(&m.resource_key, &m.metric).is_some() {
            continue;
        }
        created += 1;
        if catalog.resource_view(&m.resource_key).is_none() {
            new_resources.insert(m.resource_key.clone());
        }
        if !create {
            unknown.push(format!("{}/{}", m.resource_key, m.metric));
            continue;
        }
        m.policy = Some(creation_policy(m.policy.take(), &m.metric, &rules, &known)?);
        m.create = true;
    }
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(json!({
            "cause": "Unknown metrics",
            "detail": unknown,
        })));
    }
    let project = project_of(&headers);
    let adding = (created, new_resources.len());
    check_quotas(&state, &catalog, project.as_deref(), adding)?;
    for m in &mut incoming {
        m.project.clone_from(&project);
    }
    ingest(&state, incoming).await
}

/// The policy a metric created through the API gets: the one the request names, else the
/// rules'; it must exist.
fn creation_policy(
    named: Option<String>,
    metric: &str,
    rules: &[crate::plan::ArchivePolicyRule],
    known: &BTreeMap<String, Value>,
) -> ApiResult<String> {
    let policy = match named {
        Some(p) => p,
        None => crate::plan::policy_by_rules(rules, metric)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "No archive policy rule found for metric {metric} and no archive_policy_name given; add a rule under archive_policy_rules: or name a policy"
                ))
            })?,
    };
    if !known.contains_key(&policy) {
        return Err(ApiError::bad_request(format!(
            "Archive policy {policy} does not exist (known: {})",
            known.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(policy)
}

/// `POST /v1/metric` (`gnocchi metric create`): a metric on a resource, made through the
/// dataflow like a first measure (201 once committed, as Gnocchi shows it). Every metric here
/// lives on a resource, so `resource_id` is required; a name the resource has is a 409.
async fn create_metric(
    State(state): Shared,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let body = json_body(&body)?;
    let name = text_field(&body, "name")?;
    let (key, name) = match text_field(&body, "resource_id")? {
        Some(resource) => {
            let name = name.ok_or_else(|| {
                ApiError::bad_request(
                    "Invalid input: a metric of a resource needs a name (its resource keeps its metrics by name)",
                )
            })?;
            (batch_resource_key(&resource)?, name)
        }
        // A metric of no resource: a key of its own, its name optional.
        None => (
            format!(
                "{STANDALONE}{}",
                meterflow_connectors::gnocchi::random_uuid()
            ),
            name.unwrap_or_default(),
        ),
    };
    if name.contains('/') {
        return Err(ApiError::bad_request(format!(
            "Invalid input: metric name {name:?} contains '/'"
        )));
    }
    let wanted = NewMetric::read(name, &body)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let mut made = make_metrics(&state, &headers, &key, vec![wanted]).await?;
    let record = made.remove(0);
    let policy = policies(&state).remove(&record.archive_policy_name);
    let mut response = (StatusCode::CREATED, Json(metric_json(&record, policy))).into_response();
    if let Ok(l) = HeaderValue::from_str(&format!("/v1/metric/{}", record.metric_id)) {
        response.headers_mut().insert(header::LOCATION, l);
    }
    Ok(response)
}

/// `POST /v1/resource/TYPE/ID/metric` with `{"NAME": {"archive_policy_name", "unit"}, ...}`
/// (`gnocchi metric create --resource-id`): metrics added to an existing resource, answered
/// with them once committed.
async fn create_resource_metrics(
    State(state): Shared,
    Path((kind, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    let key = {
        let catalog = state.store.catalog()?;
        find_resource(&catalog, &kind, &id)?.key.to_owned()
    };
    let wanted = body
        .as_object()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input: expected {\"<metric name>\": {\"archive_policy_name\": ..., \"unit\": ...}, ...}",
            )
        })?
        .iter()
        .map(|(name, spec)| NewMetric::read(name.clone(), spec))
        .collect::<ApiResult<Vec<_>>>()?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let made = make_metrics(&state, &headers, &key, wanted).await?;
    // The metrics created, as Gnocchi answers (with `archive_policy_name`, no policy
    // embedded: gnocchiclient shows the first).
    Ok(Json(Value::Array(
        made.iter().map(|m| metric_json(m, None)).collect(),
    )))
}

/// A text field of a request body, if given (a non-empty string).
fn text_field(body: &Value, key: &str) -> ApiResult<Option<String>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input: {key} must be a non-empty string, not {other}"
        ))),
    }
}

/// A metric a request asks to create.
struct NewMetric {
    name: String,
    policy: Option<String>,
    unit: Option<String>,
}

impl NewMetric {
    /// `name` with the `archive_policy_name` and `unit` of `spec`.
    fn read(name: String, spec: &Value) -> ApiResult<NewMetric> {
        if !spec.is_object() {
            return Err(ApiError::bad_request(format!(
                "Invalid input: metric {name}: expected an object with archive_policy_name and unit"
            )));
        }
        let unit = text_field(spec, "unit")?;
        if unit.as_ref().is_some_and(|u| u.chars().count() > 31) {
            return Err(ApiError::bad_request(format!(
                "Invalid input: metric {name}: unit is longer than 31 characters"
            )));
        }
        Ok(NewMetric {
            policy: text_field(spec, "archive_policy_name")?,
            unit,
            name,
        })
    }
}

/// Makes `wanted` metrics of the resource keyed `key` through the dataflow (as a first
/// measure would: the worker owning the resource records them) and returns their committed
/// records; a name the resource has already is a 409, as in Gnocchi. A metric deleted through
/// the API is shown again instead (its record is kept). The caller holds `resource_writes`.
async fn make_metrics(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
    key: &str,
    wanted: Vec<NewMetric>,
) -> ApiResult<Vec<MetricRecord>> {
    let project = project_of(headers);
    let mut incoming = Vec::new();
    let mut restored = Vec::new();
    {
        let catalog = state.store.catalog()?;
        let (rules, known) = (rules(state), policies(state));
        for m in wanted {
            if catalog.get(key, &m.name).is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("Named metric {} already exists", m.name),
                ));
            }
            if let Some(old) = catalog.deleted_metric(key, &m.name) {
                // Its record is kept: creating it again shows it again (with its policy).
                restored.push(resources::metric_mark(old, true));
                continue;
            }
            incoming.push(Incoming {
                resource_key: key.to_owned(),
                policy: Some(creation_policy(m.policy, &m.name, &rules, &known)?),
                metric: m.name,
                unit: m.unit,
                points: Vec::new(),
                project: project.clone(),
                create: true,
            });
        }
        let new_resource = usize::from(!is_standalone(key) && catalog.resource_view(key).is_none());
        check_quotas(
            state,
            &catalog,
            project.as_deref(),
            (incoming.len(), new_resource),
        )?;
    }
    let mut names: Vec<String> = incoming.iter().map(|m| m.metric.clone()).collect();
    names.extend(restored.iter().filter_map(
        |r: &meterflow_connectors::gnocchi::store::ResourceRecord| {
            serde_json::from_str::<Value>(r.attributes.as_deref()?).ok()?["metric"]
                .as_str()
                .map(str::to_owned)
        },
    ));
    if !restored.is_empty() {
        resources::commit(state, restored)?;
    }
    if !incoming.is_empty() {
        ingest(state, incoming).await?;
    }
    let catalog = state.store.catalog()?;
    names
        .iter()
        .map(|name| {
            catalog.get(key, name).cloned().ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "metric {name} of resource {key} was committed but cannot be read back"
                    ),
                )
            })
        })
        .collect()
}

async fn post_batch_metrics(
    State(state): Shared,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let body = json_body(&body)?;
    let metrics = body.as_object().ok_or_else(|| {
        ApiError::bad_request("Invalid input: expected {\"<metric id>\": [measures], ...}")
    })?;
    let catalog = state.store.catalog()?;
    let mut incoming = Vec::new();
    let mut unknown = Vec::new();
    for (id, list) in metrics {
        let points = parse_measures(list, id)?;
        match catalog.by_id(id) {
            Some(record) => incoming.push(Incoming {
                resource_key: record.resource_id.clone(),
                metric: record.metric_name.clone(),
                unit: None,
                policy: None,
                points,
                project: None,
                create: false,
            }),
            None => unknown.push(id.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(json!({
            "cause": "Unknown metrics",
            "detail": unknown,
        })));
    }
    ingest(&state, incoming).await
}

async fn post_metric_measures(
    State(state): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let record = metric_by_id(&state, &id)?;
    post_one(&state, record, &body).await
}

async fn post_resource_measures(
    State(state): Shared,
    Path((kind, id, name)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let record = resource_metric(&state, &kind, &id, &name)?;
    post_one(&state, record, &body).await
}

async fn post_one(state: &ApiState, record: MetricRecord, body: &[u8]) -> ApiResult<StatusCode> {
    let body = json_body(body)?;
    let points = parse_measures(&body, &record.metric_id)?;
    let incoming = vec![Incoming {
        resource_key: record.resource_id,
        metric: record.metric_name,
        unit: None,
        policy: None,
        points,
        project: None,
        create: false,
    }];
    ingest(state, incoming).await
}

fn json_body(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid input: the body is not JSON: {e}")))
}

/// A 503 (a full disk, a stop under way) tells the client when to try again.
fn retry_later(response: &mut Response) {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
}

/// Why writes are refused while the store's disk is full.
const DISK_FULL: &str = "the disk under the store is full: writes are refused until there is space again (reads go on); retry later";

/// Hands validated measures to the dataflow and waits until they are committed.
async fn ingest(state: &ApiState, incoming: Vec<Incoming>) -> ApiResult<StatusCode> {
    let unavailable = |why: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why);
    if state.live.stopping() {
        return Err(unavailable(
            "meterflow is shutting down and accepts no more measures; send them again to the next run".into(),
        ));
    }
    writable(state)?;
    let mut measures = Vec::new();
    for m in incoming {
        let resource_key = Sym::new(&m.resource_key);
        let name = Sym::new(&m.metric);
        let unit = Sym::new(m.unit.as_deref().unwrap_or(""));
        let policy = m.policy.as_deref().map(Sym::new);
        let project_id = m.project.as_deref().map(Sym::new);
        let r = route(&m.resource_key);
        // A metric created with no measure still goes through, to be made.
        let made = (m.create && m.points.is_empty()).then_some((0, 0.0));
        let origin = if made.is_some() {
            Origin::ApiCreate
        } else {
            Origin::Api
        };
        measures.extend(m.points.into_iter().chain(made).map(|(t, v)| Measure {
            route: r,
            batch: 0,
            origin,
            resource_key,
            resource_id: resource_key,
            name,
            unit,
            user_id: None,
            project_id,
            resource_type: None,
            attributes: None,
            policy,
            timestamp_ns: t,
            value: v,
        }));
    }
    if measures.is_empty() {
        return Ok(StatusCode::ACCEPTED);
    }
    let (reply, done) = oneshot::channel();
    let gone = || {
        unavailable("the engine is not running any more (it stopped or failed; see its log)".into())
    };
    state
        .ingest
        .send(IngestRequest { measures, reply })
        .await
        .map_err(|_| gone())?;
    match done.await {
        Ok(Ok(())) => Ok(StatusCode::ACCEPTED),
        Ok(Err(why)) => Err(unavailable(format!(
            "the measures could not be stored: {why}"
        ))),
        Err(_) => Err(gone()),
    }
}

async fn prometheus(State(state): Shared) -> Response {
    let text = render_prometheus(&state.live, &state.live.totals());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// The live counters in Prometheus' text format.
pub fn render_prometheus(live: &Live, c: &Counters) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    let label = |k: &str, v: &str| {
        format!(
            "{{{k}=\"{}\"}}",
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        )
    };
    metric(
        "meterflow_lines_total",
        "counter",
        "Input lines read.",
        &one(c.lines),
    );
    metric(
        "meterflow_samples_in_total",
        "counter",
        "Samples decoded from the inputs, valid or not.",
        &one(c.samples_in),
    );
    metric(
        "meterflow_samples_unrouted_total",
        "counter",
        "Valid samples no source's meter list takes.",
        &one(c.samples_unrouted),
    );
    let sinks: Vec<(String, f64)> = live
        .sinks
        .iter()
        .zip(&c.sinks)
        .map(|(name, s)| (label("sink", name), s.samples_out as f64))
        .collect();
    metric(
        "meterflow_samples_out_total",
        "counter",
        "Samples published, per sink.",
        &sinks,
    );
    let drops: Vec<(String, f64)> = DropReason::ALL
        .iter()
        .map(|&r| (label("reason", r.as_str()), c.dropped(r) as f64))
        .collect();
    metric(
        "meterflow_dropped_total",
        "counter",
        "Records dropped, by reason.",
        &drops,
    );
    metric(
        "meterflow_late_measures_total",
        "counter",
        "Measures older than their archive policy's back_window allows (dropped).",
        &one(c.dropped(DropReason::LateMeasure)),
    );
    metric(
        "meterflow_measures_total",
        "counter",
        "Measures aggregated into the store.",
        &one(c.measures),
    );
    metric(
        "meterflow_buckets_written_total",
        "counter",
        "Bucket values written to the store.",
        &one(c.buckets_written),
    );
    metric(
        "meterflow_alarms",
        "gauge",
        "Alarms evaluated, as of the last checkpoint.",
        &one(c.alarms + c.alarms_cross),
    );
    metric(
        "meterflow_alarm_evaluations_total",
        "counter",
        "Alarm evaluations (one per alarm and closed bucket).",
        &one(c.alarm_evaluations),
    );
    metric(
        "meterflow_alarm_transitions_total",
        "counter",
        "Alarm state transitions.",
        &one(c.alarm_transitions),
    );
    metric(
        "meterflow_events_total",
        "counter",
        "Events made from notifications by the event definitions (for event sinks and alarms).",
        &one(c.events),
    );
    metric(
        "meterflow_events_published_total",
        "counter",
        "Events handed to the publishers of event sinks (one per event and publisher).",
        &one(c.events_published),
    );
    metric(
        "meterflow_alarm_notifications_total",
        "counter",
        "Alarm notifications handed to the notifiers (one per action).",
        &one(c.alarm_notifications),
    );
    if let Some(stats) = live.notifier() {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        metric(
            "meterflow_notifications_delivered_total",
            "counter",
            "Alarm notifications their receiver took.",
            &one(load(&stats.delivered)),
        );
        metric(
            "meterflow_notification_retries_total",
            "counter",
            "Alarm notification attempts retried.",
            &one(load(&stats.retries)),
        );
        metric(
            "meterflow_notifications_dead_lettered_total",
            "counter",
            "Alarm notifications given up on (written to the notifier's dead-letter file).",
            &one(load(&stats.dead_lettered)),
        );
    }
    if let Some(stats) = &live.checkpoints {
        let t = stats.totals();
        metric(
            "meterflow_checkpoints_total",
            "counter",
            "Checkpoints published (transformer state and input positions).",
            &one(t.completed),
        );
        metric(
            "meterflow_checkpoint_failures_total",
            "counter",
            "Checkpoints that could not be published (input offsets stay uncommitted).",
            &one(t.failed),
        );
        metric(
            "meterflow_checkpoint_bytes",
            "gauge",
            "Bytes of the newest checkpoint's parts.",
            &one(t.last_bytes),
        );
        metric(
            "meterflow_checkpoint_duration_seconds",
            "gauge",
            "From the newest checkpoint's barrier to its manifest.",
            &[(String::new(), t.last_duration.as_secs_f64())],
        );
        if let Some(at) = t.last_at {
            metric(
                "meterflow_checkpoint_age_seconds",
                "gauge",
                "Seconds since the newest checkpoint was published.",
                &[(
                    String::new(),
                    at.elapsed().unwrap_or_default().as_secs_f64(),
                )],
            );
        }
    }
    metric(
        "meterflow_state_forgotten_total",
        "counter",
        "Series the transformers forgot after --forget-after of event time without a sample.",
        &one(c.state_forgotten),
    );
    metric(
        "meterflow_metrics_released_total",
        "counter",
        "Metrics the aggregation released from memory after --forget-after of event time without a measure (kept in the store).",
        &one(c.metrics_released),
    );
    metric(
        "meterflow_metrics_reloaded_total",
        "counter",
        "Released metrics read back from the store because a measure reached them again.",
        &one(c.metrics_reloaded),
    );
    metric(
        "meterflow_interned_strings",
        "gauge",
        "Distinct strings (meters, resource ids, users, ...) interned for the life of the process.",
        &one(Sym::interned_count() as u64),
    );
    metric(
        "meterflow_interned_bytes",
        "gauge",
        "Bytes of those strings (they are never freed: ever-new resource ids grow it).",
        &one(Sym::interned_bytes() as u64),
    );
    metric(
        "meterflow_open_metrics",
        "gauge",
        "Metrics held in memory by the aggregation.",
        &one(c.metrics_open),
    );
    metric(
        "meterflow_open_buckets",
        "gauge",
        "Buckets not yet final, held in memory, as of the last checkpoint.",
        &one(c.buckets_open),
    );
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let names: Vec<&str> = live
        .inputs
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("api"))
        .collect();
    let (mut watermark, mut lag) = (Vec::new(), Vec::new());
    for (i, name) in names.iter().enumerate() {
        if let Some(&t) = c.newest_event_us.get(i).filter(|&&t| t != i64::MIN) {
            watermark.push((label("input", name), t as f64 / 1e6));
            lag.push((label("input", name), (now_us - t) as f64 / 1e6));
        }
    }
    metric(
        "meterflow_watermark_seconds",
        "gauge",
        "Newest event time seen per input, seconds since the epoch.",
        &watermark,
    );
    metric(
        "meterflow_watermark_lag_seconds",
        "gauge",
        "Wall clock minus the newest event time seen, per input.",
        &lag,
    );
    metric(
        "meterflow_uptime_seconds",
        "gauge",
        "Seconds since the engine started.",
        &[(String::new(), live.started.elapsed().as_secs_f64())],
    );
    out
}
