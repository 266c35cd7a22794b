//! The operator console. Its assets are plain ES modules and CSS in `assets/`, embedded in the
//! binary at compile time so the console works offline with no second server. The page reads
//! everything through the same Kubernetes API that kubectl uses (list + watch with the bearer
//! token), so nothing goes around the control plane; the routes here serve only the static files.

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

/// Every asset: (path under /ui/, content type, bytes).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/api.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/views.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../assets/style.css"),
    ),
];

/// Routes for `/ui` and its assets. They need no token: they are the same for everyone, and
/// the page then calls the API with the token the user gives it.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route("/ui/{file}", get(|axum::extract::Path(file): axum::extract::Path<String>| async move { asset(&file) }))
}

fn asset(file: &str) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        router::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_every_asset_with_its_type() {
        for (name, content_type, body) in ASSETS {
            let response = get(&format!("/ui/{name}")).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], *content_type);
            assert!(!body.is_empty());
        }
        assert_eq!(get("/ui/").await.status(), StatusCode::OK);
        assert_eq!(get("/ui").await.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            get("/ui/../Cargo.toml").await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn index_loads_only_embedded_modules() {
        let index = ASSETS[0].2;
        for src in ["app.js", "style.css"] {
            assert!(index.contains(src), "{src}");
        }
        assert!(
            !index.contains("http://") && !index.contains("https://"),
            "no CDN"
        );
    }
}
