fn main() -> std::process::ExitCode {
    // Only restores need the tuned allocator (their 20 reader threads keep freed pack
    // buffers otherwise); for backups it costs throughput. See `allocator`.
    if std::env::args()
        .skip(1)
        .any(|a| a == "restore" || a == "demo")
    {
        stowage_common::allocator::tune();
    }
    stowage_mover::main()
}
