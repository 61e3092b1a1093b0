fn main() -> std::process::ExitCode {
    secretum_api::cli::main()
}
