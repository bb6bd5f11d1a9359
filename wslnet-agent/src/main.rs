//! `wslnet-agent`: see `wslnet-agent --help`.
fn main() -> std::process::ExitCode {
    wslnet_agent::cli::main()
}
