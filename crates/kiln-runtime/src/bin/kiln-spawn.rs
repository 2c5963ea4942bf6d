//! `kiln-spawn`: the container runtime's single-threaded helper that forks
//! a sandbox's init. Run by the runtime only; see
//! `kiln_runtime::container::spawn`.

fn main() {
    std::process::exit(kiln_runtime::container::spawn::main());
}
