//! Link-time settings of the `credagent` binary.

/// The link order of the release binary's functions (scripts/symbol-order.sh writes it).
const SYMBOL_ORDER: &str = "link/symbol-order.txt";

fn main() {
    // Relative relocations packed (DT_RELR, glibc >= 2.36): the position-independent binary's
    // ~29,000 relocations took 680 KiB of `.rela.dyn`, which the loader reads whole at every
    // start, all of it resident; packed they take 9 KiB. Measured: idle RSS -0.7 MiB, no change
    // per request. The Debian package's libc6 dependency follows (dpkg-shlibdeps).
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");

    // Start-up code laid out together: the functions the agent runs from start to idle, then
    // those a request runs, come first in the text, in SYMBOL_ORDER's order. Unordered, they were
    // spread over the 8.7 MB of text, and each page fault maps its neighbours too, so about
    // 4.4 MB of it was resident at idle (docs/performance.md, "Kept"). Release builds
    // only, and only with the toolchain's own lld (the default linker of x86_64 Linux since Rust
    // 1.90), which takes the option; names the list has and the binary lacks are skipped. The
    // names' hashes hold for the agent built on its own (`cargo build --release`, `cargo deb`),
    // not built in one command with the bench (its features are unified into the agent's
    // dependencies).
    println!("cargo:rerun-if-changed={SYMBOL_ORDER}");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let default_linker = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu")
        && !std::env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| {
            ["linker", "fuse-ld", "link-self-contained"]
                .iter()
                .any(|option| flags.contains(option))
        });
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SYMBOL_ORDER);
    if release && default_linker && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
