//! Waiting for a condition with a deadline, instead of sleeping a fixed time.

use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};

/// How often conditions are re-checked.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Some(T)`, and returns that value.
///
/// A check that is still running when the deadline passes is abandoned.
///
/// # Panics
/// With "timed out after {deadline:?} waiting for {what}" when the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(deadline, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some(T)`; `None` once `deadline` has passed.
pub(crate) async fn poll<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        let remaining = give_up.saturating_duration_since(Instant::now());
        if let Ok(Some(value)) = timeout(remaining, check()).await {
            return Some(value);
        }
        let now = Instant::now();
        if now >= give_up {
            return None;
        }
        sleep_until((now + POLL_INTERVAL).min(give_up)).await;
    }
}

/// `GET path` over plain HTTP/1.0 to `address` (`host:port`), as
/// health endpoints on loopback answer it; the whole response.
pub(crate) async fn http_get(address: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
