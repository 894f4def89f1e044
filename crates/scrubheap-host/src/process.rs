//! Process-wide settings a command-line tool built on the host runtime wants.

/// Restores the default action of `SIGPIPE` (terminate quietly), so that a command whose
/// output is piped into `head` stops when the reader goes away instead of panicking on its
/// next `println!`. Rust's runtime ignores `SIGPIPE` by default; call this once, first
/// thing in `main`, before any thread is started. Returns whether the action was set.
pub fn restore_default_sigpipe() -> bool {
    // SAFETY: `signal` with `SIG_DFL` installs no handler (no Rust code runs in signal
    // context); it changes one process-wide disposition, and the caller does it before
    // starting threads, so no other thread is reading or changing it at the same time.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    previous != libc::SIG_ERR
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_action_can_be_restored_twice() {
        assert!(super::restore_default_sigpipe());
        assert!(super::restore_default_sigpipe());
    }
}
