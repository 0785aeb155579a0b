//! The request log line's cost, ours beside the libraries': the proxy's JSON format and
//! batched writer (`src/logging.rs`) against tracing-subscriber's JSON layer with
//! tracing-appender's lossy non-blocking writer, the two written to the same sink. Both
//! format the request line the proxy logs (the same fields, in the same way), on the calling
//! thread, and hand it to a writer thread.
//!
//! `cargo bench --bench logging`

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A sink that keeps nothing: the bench measures formatting and hand-off, not the pipe.
struct Discard;

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(black_box(buf).len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The request line as `src/access_log.rs` writes it.
fn request_line(i: u64) {
    tracing::info!(
        method = "GET",
        path = "/v1/benefits/discovery",
        marketplace = "US",
        region = "na",
        status = 200u16,
        attempts = 1u32,
        duration_ms = 1.234 + (i % 7) as f64,
        request_id = "6f1c2a3e-4b5d-4e6f-8a9b-0c1d2e3f4a5b",
        error = None::<&str>,
        reason = None::<&str>,
        "request"
    );
}

fn log_lines(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_log_line");
    group.throughput(Throughput::Elements(1));

    {
        let (subscriber, _flush) = prime_sigv4_proxy::logging::json_subscriber_into(Discard);
        tracing::subscriber::with_default(subscriber, || {
            let mut i = 0;
            group.bench_function("ours: JsonLines + batched writer", |b| {
                b.iter(|| {
                    i += 1;
                    request_line(i)
                })
            });
        });
    }

    {
        use tracing_subscriber::layer::SubscriberExt;
        let (writer, _flush) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .finish(Discard);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, || {
            let mut i = 0;
            group.bench_function("library: fmt().json() + tracing-appender", |b| {
                b.iter(|| {
                    i += 1;
                    request_line(i)
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, log_lines);
criterion_main!(benches);
