//! Request limits that clients rely on seeing as proper `Status` errors.

mod common;

#[tokio::test]
async fn bodies_over_three_mebibytes_get_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::start(dir.path()).await;
    let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let post = |body: Vec<u8>| {
        http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("request")
    };
    // Just over the limit: refused before it is parsed, as a Status.
    let mut big = br#"{"metadata":{"name":"big","annotations":{"a":""#.to_vec();
    big.resize(3 * 1024 * 1024 + 1, b'x');
    big.extend_from_slice(br#""}}}"#);
    match server.client.request_text(post(big)).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (413, "RequestEntityTooLarge"));
        }
        other => panic!("expected 413, got {other:?}"),
    }
    // A large body under the limit is fine.
    let mut ok = br#"{"metadata":{"name":"ok","annotations":{"a":""#.to_vec();
    ok.resize(1024 * 1024, b'x');
    ok.extend_from_slice(br#""}}}"#);
    server
        .client
        .request_text(post(ok))
        .await
        .expect("1 MiB create");
    server.stop().await;
}
