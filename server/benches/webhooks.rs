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

use baton_server::settings::{EnvOverrides, Settings};
use baton_server::startup::Application;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const DELIVERIES: usize = 5_000;
const WARM_UP: usize = 200;
const CONCURRENCY: usize = 16;
const TIME_LIMIT: Duration = Duration::from_secs(120);
const SECRET: &str = "bench secret";

const CONFIG: &str = r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:haproxy.sock"]

[[service]]
name = "api"
load_balancer = "edge"
[service.runtime]
kind = "command"
initial_version = "v1"
start = "true"
stop = "true"
[[service.backend]]
name = "s1"
address = "127.0.0.1:18001"
[service.webhook]
secret_env = "API_WEBHOOK_SECRET"
branch = "main"
"#;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = "github/push__with-new-branch.payload.json";
    let fixture = std::fs::read_to_string(manifest.join("tests/fixtures/webhooks").join(fixture))
        .expect("the GitHub push fixture");
    // The fixture's `before` (a new branch: forty zeros), replaced by a number per delivery
    // (the same length, so every body is as large as the fixture).
    let zeros = format!("\"before\": \"{}\"", "0".repeat(40));
    assert!(fixture.contains(&zeros), "the fixture's before commit");
    let signed = move |n: usize| {
        let body = fixture.replacen(&zeros, &format!("\"before\": \"{n:040x}\""), 1);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        (axum::body::Bytes::from(body), signature)
    };
    let size = signed(0).0.len();

    let dir = tempfile::tempdir().expect("a temporary folder");
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        site_root: Some(dir.path().join("site").display().to_string()),
        ..EnvOverrides::default()
    };
    let settings =
        Settings::parse_with_secrets(CONFIG, &dir.path().join("baton.toml"), &env, &|name| {
            match name {
                "API_WEBHOOK_SECRET" => Some(SECRET.to_owned()),
                _ => std::env::var(name).ok(),
            }
        })
        .expect("the bench configuration is valid");
    let application = Application::build(settings).await.expect("Baton starts");
    let url = format!("http://{}/hooks/api", application.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let post = {
        let client = client.clone();
        let url = url.clone();
        move |n: usize| {
            let (body, signature) = signed(n);
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("bench-{n}"))
                .header("x-hub-signature-256", signature)
                .body(body);
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
    shutdown.cancel();
    server
        .await
        .expect("the server task ends")
        .expect("Baton stops cleanly");

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
