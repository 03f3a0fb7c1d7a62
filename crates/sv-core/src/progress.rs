//! Progress bars for long loops (drawn on a terminal, silent otherwise: CI, pipes, logs) and the
//! logging set-up the command-line tools share.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether standard error is a terminal.
pub fn is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar of `len` steps with a message, hidden when not on a terminal.
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// A spinner for loops of unknown length.
pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        None,
        if is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    pb.set_style(ProgressStyle::with_template("{msg:>12} {spinner} {pos} ({per_sec})").expect("static template"));
    pb.set_message(msg.to_string());
    pb
}

/// Log to standard error with `RUST_LOG` if set, else `default` (e.g. `"warn,sv_data=info"`).
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
}
