//! Stop signals. Greengrass stops a component with SIGTERM; a person with
//! Ctrl-C (SIGINT).

use tokio::signal::unix::{SignalKind, signal};

/// Resolves with the signal's name when SIGTERM or SIGINT arrives.
pub async fn stopped() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        std::future::pending::<()>().await;
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
