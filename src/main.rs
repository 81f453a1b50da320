//! The `tidegate` binary: everything lives in the library; see `tidegate::cli`.

fn main() -> std::process::ExitCode {
    raise_fd_limit();
    tidegate::cli::main()
}

/// Raises the soft limit on open files to the hard one, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do: every client and upstream connection is a descriptor, and a soft
/// limit of 1024 (still common outside containers) would stop accepts long before
/// `limits.max_connections`. The proxy warns at startup if the result is still too low.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed, which outlives both
    // calls; a failure leaves the limit as it was, which is all this can do about it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// mimalloc rather than the system allocator: see the note in Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
