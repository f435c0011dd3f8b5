//! `spawn_fleet()`: HAProxy in front of three demo-app backends that Baton starts, each test on
//! its own ports and folder. Everything started here is killed when the fleet is dropped.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_server::settings::{EnvOverrides, Settings};
use baton_server::startup::Application;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub struct Fleet {
    pub baton: String,
    pub frontend: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    haproxy: Child,
    shutdown: CancellationToken,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options for the fleet under test.
pub struct FleetOptions {
    pub backends: usize,
    pub drain_timeout: &'static str,
    pub start_timeout: &'static str,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            backends: 3,
            drain_timeout: "10s",
            start_timeout: "5s",
        }
    }
}

pub async fn spawn_fleet(options: FleetOptions) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let frontend_port = free_port();
    let ports: Vec<u16> = (0..options.backends).map(|_| free_port()).collect();
    let socket = dir.path().join("haproxy.sock");

    let servers: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("    server web{} 127.0.0.1:{port} check\n", i + 1))
        .collect();
    let haproxy_cfg = format!(
        "global\n    stats socket {socket} mode 600 level admin\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 0\n\
         frontend fe\n    bind 127.0.0.1:{frontend_port}\n    default_backend web\n\
         backend web\n    option httpchk GET /alive\n    default-server inter 100ms fastinter 50ms downinter 100ms rise 2 fall 2\n{servers}",
        socket = socket.display()
    );
    std::fs::write(dir.path().join("haproxy.cfg"), haproxy_cfg).unwrap();
    let haproxy = Command::new("/usr/sbin/haproxy")
        .args(["-db", "-f"])
        .arg(dir.path().join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("HAProxy starts (apt-get install haproxy)");

    let backends: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "[[service.backend]]\nname = \"web{}\"\naddress = \"127.0.0.1:{port}\"\n",
                i + 1
            )
        })
        .collect();
    let config = format!(
        r#"
[[load_balancer]]
name = "edge"
kind = "haproxy"
runtime_api = ["unix:haproxy.sock"]

[[service]]
name = "web"
load_balancer = "edge"
haproxy_backend = "web"
[service.health]
interval = "50ms"
timeout = "1s"
healthy_threshold = 2
start_timeout = "{start_timeout}"
[service.drain]
timeout = "{drain_timeout}"
[service.runtime]
kind = "process"
command = ["{app}"]
initial_version = "v1"
stop_timeout = "5s"
{backends}"#,
        start_timeout = options.start_timeout,
        drain_timeout = options.drain_timeout,
        app = env!("CARGO_BIN_EXE_baton-demo-app"),
    );
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        ..EnvOverrides::default()
    };
    let settings = Settings::parse(&config, &dir.path().join("baton.toml"), &env).unwrap();
    let application = Application::build(settings).await.unwrap();
    let baton = format!("http://{}", application.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(application.run_until_stopped(shutdown.clone()));

    let fleet = Fleet {
        baton,
        frontend: format!("http://127.0.0.1:{frontend_port}"),
        client: reqwest::Client::new(),
        dir,
        haproxy,
        shutdown,
    };
    fleet.wait_all_up(options.backends).await;
    fleet
}

impl Fleet {
    /// Waits until HAProxy reports every backend UP (Baton brings them up at start).
    pub async fn wait_all_up(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(services) = self.get("/api/services").await {
                let up = services[0]["backends"]
                    .as_array()
                    .map(|backends| {
                        backends
                            .iter()
                            .filter(|b| b["load_balancer"][0]["status"] == "UP")
                            .count()
                    })
                    .unwrap_or(0);
                if up == count {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the fleet did not come up: {:?}",
                self.get("/api/services").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, reqwest::Error> {
        self.client
            .get(format!("{}{path}", self.baton))
            .send()
            .await?
            .json()
            .await
    }

    pub async fn deploy(&self, version: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/services/web/deployments", self.baton))
            .json(&serde_json::json!({ "version": version }))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Waits until the rollout has finished and returns it with its steps.
    pub async fn finished(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let deployment = self.get(&format!("/api/deployments/{id}")).await.unwrap();
            if !matches!(deployment["status"].as_str(), Some("queued" | "running")) {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {id} did not finish: {deployment:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What each request through HAProxy is answered with: "v2 web1", say.
    pub async fn through_haproxy(&self) -> Result<String, String> {
        match self
            .client
            .get(&self.frontend)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                Ok(response.text().await.unwrap_or_default())
            }
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(error) => Err(error.to_string()),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        kill_recorded_backends(&self.state_dir());
    }
}

/// The backends run detached from Baton (on purpose): end them by the PIDs Baton recorded.
fn kill_recorded_backends(state_dir: &Path) {
    let Ok(services) = std::fs::read_dir(state_dir) else {
        return;
    };
    for service in services.flatten() {
        let Ok(records) = std::fs::read_dir(service.path()) else {
            continue;
        };
        for record in records.flatten() {
            if record.path().extension().is_some_and(|ext| ext == "json") {
                let text = std::fs::read_to_string(record.path()).unwrap_or_default();
                if let Some(pid) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|r| r["pid"].as_i64())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(-(pid as i32)),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}
