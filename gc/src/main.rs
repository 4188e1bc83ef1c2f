fn main() -> std::process::ExitCode {
    stowage_gc::main()
}
