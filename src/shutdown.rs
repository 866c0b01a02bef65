//! Graceful shutdown: one token cancelled on SIGTERM or Ctrl-C, handed to every loop.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled when the process receives SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

/// Once `token` is cancelled, give the process `deadline` to finish its work in hand, then
/// exit anyway: a stuck dependency must not keep a stopping process alive forever.
pub fn watchdog(token: &CancellationToken, deadline: std::time::Duration) {
    let token = token.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        tokio::time::sleep(deadline).await;
        tracing::error!(
            ?deadline,
            "shutdown deadline passed with work unfinished; exiting"
        );
        std::process::exit(1);
    });
}
