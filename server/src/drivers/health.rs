//! The health probe over HTTP: what Baton's `wait_healthy` step asks a backend.

use std::time::Duration;

use async_trait::async_trait;

use super::{HealthProbe, ProbeFailure};
use crate::domain::BackendAddr;

#[async_trait]
impl HealthProbe for reqwest::Client {
    async fn probe(
        &self,
        address: BackendAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        match self
            .get(format!("http://{address}{path}"))
            .timeout(timeout)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(ProbeFailure::Status(response.status())),
            Err(error) if error.is_timeout() => Err(ProbeFailure::TimedOut),
            Err(error) => Err(ProbeFailure::Unanswered(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A backend on a loopback port that gives every request `reply` (`None`: reads the request
    /// and never answers).
    async fn backend(reply: Option<&'static str>) -> (BackendAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = BackendAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                if let Some(reply) = reply {
                    let _ = stream.write_all(reply.as_bytes()).await;
                }
                held.push(stream);
            }
        });
        (address, task)
    }

    #[tokio::test]
    async fn a_probe_passes_on_2xx_and_says_why_it_did_not_otherwise() {
        let client = reqwest::Client::new();
        let timeout = Duration::from_millis(300);
        let (ok, ok_task) = backend(Some("HTTP/1.1 204 No Content\r\n\r\n")).await;
        let (unavailable, unavailable_task) = backend(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        let (silent, silent_task) = backend(None).await;
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            BackendAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap()
        };

        assert_eq!(client.probe(ok, "/alive", timeout).await, Ok(()));
        assert_eq!(
            client.probe(unavailable, "/alive", timeout).await,
            Err(ProbeFailure::Status(
                reqwest::StatusCode::SERVICE_UNAVAILABLE
            ))
        );
        assert_eq!(
            client.probe(silent, "/alive", timeout).await,
            Err(ProbeFailure::TimedOut)
        );
        match client.probe(closed, "/alive", timeout).await {
            Err(ProbeFailure::Unanswered(reason)) => {
                assert!(
                    reason.contains(&format!("http://{closed}/alive")),
                    "{reason}"
                )
            }
            other => panic!("expected Unanswered, got {other:?}"),
        }
        for task in [ok_task, unavailable_task, silent_task] {
            task.abort();
        }
    }
}
