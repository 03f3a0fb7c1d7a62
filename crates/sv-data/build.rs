//! Nothing to build: sv-data's build dependency on `protoc-bin-vendored` makes cargo download
//! Google's protoc before any build script runs, and `scripts/protoc` (the workspace's PROTOC,
//! `.cargo/config.toml`) runs it for lance's build scripts. This script checks it is there.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=no vendored protoc for this platform ({e}); lance's build needs a protoc on PATH");
    }
}
