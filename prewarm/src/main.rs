fn main() -> std::process::ExitCode {
    stowage_prewarm::main()
}
