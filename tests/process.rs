//! The real binary as a process: its threads and its exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// The names of the process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

fn worker_threads(pid: u32) -> usize {
    thread_names(pid)
        .iter()
        .filter(|name| name.starts_with("tokio-rt-worker") || name.starts_with("tokio-runtime-w"))
        .count()
}

#[tokio::test]
async fn worker_threads_sets_how_many_threads_serve_requests() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    // The default, 1, is the main thread alone (a current-thread runtime): no runtime workers
    // at all, and besides it only the log writer.
    for (setting, expected) in [("", 0), ("worker_threads = 3\n", 3)] {
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
        let pid = proxy.child.id().unwrap();
        assert_eq!(worker_threads(pid), expected, "{setting:?}");
        if expected == 0 {
            let names = thread_names(pid);
            assert_eq!(names.len(), 2, "{names:?}");
            assert!(names.iter().any(|name| name == "log-writer"), "{names:?}");
        }
        assert_eq!(proxy.terminate().await.code(), Some(0));
    }
}
