//! What the AWS sinks (Firehose, Security Hub) share: one trimmed SDK
//! configuration (rustls with ring, the default credential chain, so the
//! Greengrass Token Exchange Service on a core), the wait between attempts
//! (its delays come from [`crate::backoff`], like every retry path's) and error
//! text.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{ConfigLoader, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::publish::outbox::Outbox;

/// Applies the HTTP client, timeouts and `region` (when given; else the
/// chain decides: `AWS_REGION`, profile) to `loader` and loads it.
pub(crate) async fn sdk_config(region: Option<&str>, loader: ConfigLoader) -> SdkConfig {
    // One TLS stack (rustls with ring) for both the SDK and the credential
    // providers; without an explicit client the trimmed SDK has none and
    // fails at the first call.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = loader.http_client(http).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    loader.load().await
}

/// Asks the configured credential chain for credentials once; the error
/// says why there are none.
pub(crate) async fn check_credentials(sdk: &SdkConfig) -> Result<(), String> {
    let provider = sdk
        .credentials_provider()
        .ok_or_else(|| "no credentials provider configured".to_owned())?;
    provider
        .provide_credentials()
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(())
}

/// Waits `delay` before a sink's next attempt. Before shutdown a shutdown
/// request cuts the wait short and sets `deadline` (now + `shutdown_timeout`):
/// the sink then keeps trying until it. After that, a wait that would end
/// past the deadline is not started: returns false, the sink stops and what
/// waits stays in its outbox.
pub(crate) async fn pause(
    delay: Duration,
    deadline: &mut Option<Instant>,
    shutdown: &mut watch::Receiver<bool>,
    shutdown_timeout: Duration,
) -> bool {
    match *deadline {
        Some(until) if Instant::now() + delay >= until => return false,
        Some(_) => tokio::time::sleep(delay).await,
        None => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => {
                    *deadline = Some(Instant::now() + shutdown_timeout);
                }
            }
        }
    }
    true
}

/// The outbox a sink shares between its handle and its worker task.
pub(crate) fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    // A panic while holding the lock leaves the outbox's files consistent
    // (each operation is one rename or remove), so a poisoned lock is usable.
    outbox.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error and its sources on one line: the SDK's top-level messages
/// ("dispatch failure", "service error") say little without them.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
