//! The `worker` binary: all logic lives in the library (`worker::cli`).

fn main() -> std::process::ExitCode {
    worker::cli::main()
}
