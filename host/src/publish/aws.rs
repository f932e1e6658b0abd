//! What the AWS sinks (Firehose, Security Hub) share: one trimmed SDK
//! configuration (rustls with ring, the default credential chain, so the
//! Greengrass Token Exchange Service on a core), retry timing and error text.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{ConfigLoader, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;

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

/// Full-jitter exponential backoff: a random delay between half and all of
/// `base * 2^(round-1)`, capped at `max`. Jitter keeps a fleet of devices
/// that lost the network together from retrying in lockstep.
pub(crate) fn backoff(base: Duration, max: Duration, round: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << round.saturating_sub(1).min(20))
        .min(max);
    let half = ceiling / 2;
    let spread = ceiling.saturating_sub(half).as_millis() as u64;
    // RandomState is seeded randomly per instance: enough randomness for
    // jitter without a dependency.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    half + Duration::from_millis(random % (spread + 1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for round in 1..30 {
            let ceiling = (base * 2u32.pow(round.min(20) - 1)).min(max);
            let d = backoff(base, max, round);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "round {round}: {d:?} vs {ceiling:?}"
            );
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| backoff(base, max, 6)).collect();
        assert!(spread.len() > 5, "jitter varies the delay: {spread:?}");
    }
}
