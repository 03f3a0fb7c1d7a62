//! The `tch` build's C++ shim (`csrc/tch_shim.cpp`): ATen calls the `tch` crate does not reach,
//! compiled against the same LibTorch headers torch-sys uses (its `links = "tch"` metadata gives
//! the library folder; the headers sit beside it). Other builds compile nothing here.

fn main() {
    #[cfg(feature = "tch")]
    shim();
}

#[cfg(feature = "tch")]
fn shim() {
    println!("cargo:rerun-if-changed=csrc/tch_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib =
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names its LibTorch folder (DEP_TCH_LIBTORCH_LIB)");
    let root = std::path::Path::new(&lib).parent().expect("LibTorch's lib folder has a parent").to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/tch_shim.cpp")
        .compile("sv_tch_shim");
}
