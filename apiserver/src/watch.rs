//! Watch streams: newline-delimited JSON events over a chunked HTTP 200 response, fed from the
//! cache's event ring.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cache::{Event, EventType, TooOld};
use crate::cached::Cached;
use crate::error::ApiError;
use crate::registry::ResourceDef;
use crate::rest::{present_cached, App, Filter, ResourceRequest};
use crate::table::{self, IncludeObject, Rendering};

struct Watcher {
    def: Arc<ResourceDef>,
    api_version: String,
    prefix: String,
    filter: Filter,
    rendering: Rendering,
    include: IncludeObject,
    bookmarks: bool,
    sent_columns: bool,
    tx: mpsc::Sender<Result<Bytes, std::convert::Infallible>>,
}

impl Watcher {
    /// The frame announcing `obj` as a `type_` event.
    fn frame(&mut self, type_: &str, obj: &Cached) -> Bytes {
        let obj = match self.rendering {
            Rendering::Object => return object_frame(type_, obj, &self.api_version),
            Rendering::Metadata => table::partial_metadata(&present_cached(&self.def, obj)),
            Rendering::Table => {
                // Only the first event carries the column definitions.
                let with_columns = !self.sent_columns;
                self.sent_columns = true;
                let row = present_cached(&self.def, obj);
                table::table(&self.def, &[row], json!({}), self.include, with_columns)
            }
        };
        value_frame(type_, &obj)
    }

    /// The frame of `e` as it happened; every watcher seeing the stored object under its own
    /// apiVersion sends the same bytes, encoded once.
    fn event_frame(&mut self, e: &Event) -> Bytes {
        if self.rendering == Rendering::Object
            && e.object.api_version() == Some(self.api_version.as_str())
        {
            let api_version = &self.api_version;
            return e
                .frame
                .get_or_init(|| object_frame(e.type_.as_str(), &e.object, api_version))
                .clone();
        }
        self.frame(e.type_.as_str(), &e.object)
    }

    /// Sends one frame; false once the client has gone.
    async fn send_frame(&self, frame: Bytes) -> bool {
        self.tx.send(Ok(frame)).await.is_ok()
    }

    async fn send(&self, type_: &str, object: Value) -> bool {
        self.send_frame(value_frame(type_, &object)).await
    }

    async fn bookmark(&self, rev: u64) -> bool {
        self.bookmark_with(rev, false).await
    }

    async fn bookmark_with(&self, rev: u64, initial_events_end: bool) -> bool {
        let mut obj = json!({
            "kind": self.def.kind,
            "apiVersion": self.def.api_version(),
            "metadata": {"resourceVersion": rev.to_string()},
        });
        if initial_events_end {
            obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send("BOOKMARK", obj).await
    }
}

/// Starts a watch; the response streams until the timeout, the client leaving, or shutdown.
pub fn watch(app: Arc<App>, req: &ResourceRequest) -> Result<Response, ApiError> {
    let filter = Filter::from_request(req)?;
    // WatchList: the current state as ADDED events, then a bookmark marking the end of them.
    let initial_events = req.flag("sendInitialEvents") == Some(true);
    let start: Option<u64> = match req
        .param("resourceVersion")
        .filter(|s| !s.is_empty() && *s != "0")
    {
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))?,
        ),
        None => None,
    };
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        // Upstream picks 30–60 minutes when the client does not say.
        .unwrap_or(Duration::from_secs(1800));
    let (tx, rx) = mpsc::channel(64);
    let mut w = Watcher {
        def: req.def.clone(),
        api_version: req.def.api_version(),
        prefix: req.def.list_prefix(req.namespace.as_deref()),
        filter,
        rendering: req.rendering(),
        include: IncludeObject::parse(req.param("includeObject")),
        bookmarks: req.flag("allowWatchBookmarks") == Some(true),
        sent_columns: false,
        tx,
    };
    tokio::spawn(async move { run(app, &mut w, start, initial_events, timeout).await });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

async fn run(
    app: Arc<App>,
    w: &mut Watcher,
    start: Option<u64>,
    initial_events: bool,
    timeout: Duration,
) {
    let feed = app.cache.subscribe_events(&w.prefix, w.filter.pin());
    let mut shutdown = app.shutdown.clone();
    let deadline = Instant::now() + timeout;
    let mut last = match start {
        Some(rev) => rev,
        None => {
            // "Get state and start at most recent": synthetic ADDED for what exists now.
            let (rev, items) = app.cache.list(&w.prefix, None);
            for (_, obj) in items {
                if w.filter.matches(&obj) {
                    let frame = w.frame("ADDED", &obj);
                    if !w.send_frame(frame).await {
                        return;
                    }
                }
            }
            if initial_events && w.bookmarks && !w.bookmark_with(rev, true).await {
                return;
            }
            rev
        }
    };
    let mut next_bookmark = Instant::now() + app.bookmark_interval;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let events = match feed.take(last) {
            Ok((events, up_to)) => {
                last = up_to;
                events
            }
            Err(TooOld { requested, oldest }) => {
                let err =
                    ApiError::Expired(format!("too old resource version: {requested} ({oldest})"));
                w.send("ERROR", err.status()).await;
                return;
            }
        };
        for e in events {
            if !e.key.starts_with(&w.prefix) {
                continue;
            }
            let now_matches = e.type_ != EventType::Deleted && w.filter.matches(&e.object);
            let was_matching = e.prev.as_deref().is_some_and(|p| w.filter.matches(p));
            let frame = match (e.type_, was_matching, now_matches) {
                (EventType::Deleted, true, _)
                | (EventType::Added, _, true)
                | (EventType::Modified, true, true) => Some(w.event_frame(&e)),
                (EventType::Modified, false, true) => Some(w.frame("ADDED", &e.object)),
                // Left the selector: the client sees it go, in its last matching state but at
                // this revision.
                (EventType::Modified, true, false) => e
                    .prev
                    .as_deref()
                    .map(|prev| w.frame("DELETED", &prev.at(e.rev))),
                _ => None,
            };
            if let Some(frame) = frame {
                if !w.send_frame(frame).await {
                    return;
                }
            }
        }
        let wake = next_bookmark.min(deadline);
        tokio::select! {
            _ = feed.arrived() => {}
            _ = shutdown.changed() => return,
            _ = w.tx.closed() => return,
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    // A last bookmark lets the client resume from here without a relist.
                    if w.bookmarks {
                        w.bookmark(last).await;
                    }
                    return;
                }
                if w.bookmarks && !w.bookmark(last).await {
                    return;
                }
                next_bookmark = Instant::now() + app.bookmark_interval;
            }
        }
    }
}

/// `{"type": …, "object": …}` and a newline, with the object copied from its stored bytes.
fn object_frame(type_: &str, obj: &Cached, api_version: &str) -> Bytes {
    let mut line = Vec::with_capacity(obj.len() + 64);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(type_.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    obj.write_json(&mut line, api_version);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn value_frame(type_: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
