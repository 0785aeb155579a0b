//! The real binary as a process: its threads and its exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("tokio-rt-worker") || name.starts_with("tokio-runtime-w"))
        .count()
}

#[tokio::test]
async fn worker_threads_sets_how_many_threads_serve_requests() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    for (setting, expected) in [("", 1), ("worker_threads = 3\n", 3)] {
        let command = command_with_static_key(pki.dir.path());
        let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, setting)).await;
        let reply = get(
            &client(),
            &proxy.url("/v1/a"),
            &[("x-amz-marketplace", "US")],
        )
        .await;
        assert_eq!(reply.status, 200);
        ups.na.requests().pop().unwrap().assert_signed();
        assert_eq!(
            worker_threads(proxy.child.id().unwrap()),
            expected,
            "{setting:?}"
        );
        assert_eq!(proxy.terminate().await.code(), Some(0));
    }
}
