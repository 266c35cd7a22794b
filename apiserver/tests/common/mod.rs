//! Starts the real server in-process on 127.0.0.1:0 and builds clients for it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_apiserver::{serve_with_limits, Limits, ServeOptions, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token";

pub struct TestServer {
    pub url: String,
    pub client: kube::Client,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), strata_apiserver::Error>>>,
}

pub async fn start(data_dir: &Path) -> TestServer {
    start_with(data_dir, Limits::default()).await
}

pub async fn start_with(data_dir: &Path, limits: Limits) -> TestServer {
    start_full(data_dir, limits, Some(TOKEN)).await
}

/// Without a token: kubectl (client-go) never sends bearer tokens over plain HTTP
/// (kubernetes/kubectl#744), so the kubectl tests need an open server.
pub async fn start_open(data_dir: &Path) -> TestServer {
    start_full(data_dir, Limits::default(), None).await
}

/// On the given store backend (the data dir still holds the embedded store, if chosen).
pub async fn start_on(data_dir: &Path, store: StoreConfig) -> TestServer {
    start_full_on(data_dir, store, Limits::default(), Some(TOKEN)).await
}

async fn start_full(data_dir: &Path, limits: Limits, token: Option<&str>) -> TestServer {
    start_full_on(data_dir, StoreConfig::Embedded, limits, token).await
}

async fn start_full_on(
    data_dir: &Path,
    store: StoreConfig,
    limits: Limits,
    token: Option<&str>,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = oneshot::channel::<()>();
    let opts = ServeOptions {
        data_dir: data_dir.to_path_buf(),
        store,
        bearer_token: token.map(str::to_string),
        crds: strata_apis::crds(),
    };
    let handle = tokio::spawn(serve_with_limits(opts, limits, listener, async {
        let _ = rx.await;
    }));
    let client = client(&url, token);
    // Wait for readiness: the listener is bound already, so the first request succeeds as soon
    // as start-up (store open, CRD install) is done.
    client
        .apiserver_version()
        .await
        .expect("server answers /version");
    TestServer {
        url,
        client,
        data_dir: data_dir.to_path_buf(),
        stop: Some(tx),
        handle: Some(handle),
    }
}

pub fn client(url: &str, token: Option<&str>) -> kube::Client {
    let mut cfg = kube::Config::new(url.parse().expect("url"));
    cfg.default_namespace = "default".into();
    if let Some(t) = token {
        cfg.headers.push((
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
        ));
    }
    kube::Client::try_from(cfg).expect("client")
}

impl TestServer {
    /// Shuts down gracefully and waits for the store to close.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .expect("server stops within 20s")
                .expect("server task")
                .expect("serve returns Ok");
        }
    }

    /// A raw GET with the given Accept header; returns status and JSON body.
    pub async fn get_json(&self, path: &str, accept: &str) -> (u16, serde_json::Value) {
        let req = http::Request::get(path)
            .header(http::header::ACCEPT, accept)
            .body(Vec::new())
            .expect("request");
        match self.client.request_text(req).await {
            Ok(text) => (200, serde_json::from_str(&text).expect("json body")),
            Err(kube::Error::Api(s)) => (s.code, serde_json::to_value(&*s).expect("status")),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }
}

pub fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other}"),
    }
}

/// The next item of a watch stream, failing the test if none comes within 10 s.
pub async fn next<S: futures::Stream + Unpin>(s: &mut S) -> S::Item {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("stream item within 10s")
        .expect("stream not ended")
}

/// The next watch event that is not a bookmark (the server may send those at any time).
pub async fn next_change<K, S>(s: &mut S) -> kube::core::WatchEvent<K>
where
    S: futures::Stream<Item = kube::Result<kube::core::WatchEvent<K>>> + Unpin,
{
    loop {
        match next(s).await.expect("event") {
            kube::core::WatchEvent::Bookmark(_) => continue,
            event => return event,
        }
    }
}
