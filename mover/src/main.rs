fn main() -> std::process::ExitCode {
    stowage_mover::main()
}
