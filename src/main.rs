//! The `tidegate` binary: everything lives in the library; see `tidegate::cli`.

fn main() -> std::process::ExitCode {
    tidegate::cli::main()
}
