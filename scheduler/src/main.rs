fn main() -> std::process::ExitCode {
    stowage_scheduler::main()
}
