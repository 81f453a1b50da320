//! The `tidegate` binary: everything lives in the library; see `tidegate::cli`.

fn main() -> std::process::ExitCode {
    tidegate::cli::main()
}

/// mimalloc rather than the system allocator: see the note in Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
