//! How many webhook deliveries Baton handles per second: a real GitHub push payload (from
//! shared/fixtures/webhooks), signed, posted concurrently over loopback to Baton running in this
//! process on port 0. The pushes go to a branch the service does not deploy, so each one is
//! verified, parsed, checked against the delivery log (its id and its body) and logged, and
//! starts nothing. Each delivery's `before` commit is its own, so no body is a duplicate of
//! another's.
//!
//! `cargo bench -p server --bench webhooks` prints deliveries per second and latency
//! percentiles, and writes them to target/bench/webhooks.txt. Bounded: a fixed number of
//! deliveries, and a time limit after which it stops and reports what it measured.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::baton::spawn_app_with;
use support::config::{Config, Runtime, Service, Webhook};
use support::webhooks::{Host, fixture, signed};

#[path = "../tests/support/mod.rs"]
mod support;

const DELIVERIES: usize = 5_000;
const WARM_UP: usize = 200;
const CONCURRENCY: usize = 16;
const TIME_LIMIT: Duration = Duration::from_secs(120);
const SECRET: &str = "bench secret";

/// One service, `api`, that deploys pushes to `main` only.
fn config() -> Config {
    Config::edge().service(
        Service::new("api")
            .runtime(Runtime::command())
            .backend("s1", 18001)
            .webhook(Webhook::new("API_WEBHOOK_SECRET").branch("main")),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = String::from_utf8(fixture("github/push__with-new-branch.payload.json"))
        .expect("the GitHub push fixture is UTF-8");
    // The fixture's `before` (a new branch: forty zeros), replaced by a number per delivery
    // (the same length, so every body is as large as the fixture).
    let zeros = format!("\"before\": \"{}\"", "0".repeat(40));
    assert!(fixture.contains(&zeros), "the fixture's before commit");
    // Delivery `n`: its body and GitHub's headers for it, signed.
    let delivery = move |n: usize| {
        let body = fixture.replacen(&zeros, &format!("\"before\": \"{n:040x}\""), 1);
        let headers = signed(
            Host::GitHub,
            "push",
            &format!("bench-{n}"),
            body.as_bytes(),
            SECRET,
        );
        (axum::body::Bytes::from(body), headers)
    };
    let size = delivery(0).0.len();

    let app = spawn_app_with(&config().toml(), &[("API_WEBHOOK_SECRET", SECRET)]).await;
    let url = format!("{}/hooks/api", app.address);

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let post = {
        let client = client.clone();
        let url = url.clone();
        move |n: usize| {
            let (body, headers) = delivery(n);
            let mut request = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            async move {
                let response = request.send().await.expect("Baton answers");
                let status = response.status();
                let text = response.text().await.expect("a body");
                assert_eq!(status, 202, "an ignored push is answered 202: {text}");
                assert!(text.contains("\"verdict\":\"ignored\""), "{text}");
            }
        }
    };

    for n in 0..WARM_UP {
        post(DELIVERIES + n).await;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + TIME_LIMIT;
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let next = next.clone();
            let post = post.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= DELIVERIES || Instant::now() > deadline {
                        return latencies;
                    }
                    let sent = Instant::now();
                    post(i).await;
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(DELIVERIES);
    for worker in workers {
        latencies.extend(worker.await.expect("a worker finishes"));
    }
    let elapsed = started.elapsed();
    app.stop().await;

    latencies.sort();
    let count = latencies.len();
    let percentile = |p: f64| {
        let index = ((count as f64 * p).ceil() as usize).clamp(1, count) - 1;
        latencies[index]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = format!(
        "webhooks bench: {count} signed GitHub push deliveries (ignored: another branch), \
         {CONCURRENCY} concurrent, {} bytes each{}\n\
         deliveries/s: {:.0}\n\
         latency p50: {:.2} ms\n\
         latency p99: {:.2} ms\n\
         latency max: {:.2} ms\n\
         elapsed: {:.2} s (client and server in one process, {} profile)\n",
        size,
        if count < DELIVERIES {
            format!(" (stopped at the {TIME_LIMIT:?} limit)")
        } else {
            String::new()
        },
        count as f64 / elapsed.as_secs_f64(),
        ms(percentile(0.50)),
        ms(percentile(0.99)),
        ms(latencies[count - 1]),
        elapsed.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimized"
        },
    );
    print!("{report}");
    let out = manifest.join("../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench can be created");
    std::fs::write(out.join("webhooks.txt"), &report)
        .expect("target/bench/webhooks.txt is written");
}
