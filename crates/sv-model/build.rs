//! The `tch` build's C++ shim (`csrc/tch_shim.cpp`): ATen calls the `tch` crate does not reach,
//! compiled against the same LibTorch headers torch-sys uses (its `links = "tch"` metadata gives
//! the library folder; the headers sit beside it). Its CUDA graph and stream calls also need the
//! CUDA runtime's headers and library: `CUDA_HOME` names a CUDA toolkit (or the `nvidia/cu13`
//! folder of NVIDIA's `nvidia-cuda-runtime` wheel); without it, the `nvidia/cu*` folder beside a
//! pip-installed torch is used. Other builds compile nothing here.

fn main() {
    #[cfg(feature = "tch")]
    shim();
}

#[cfg(feature = "tch")]
fn shim() {
    println!("cargo:rerun-if-changed=csrc/tch_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let lib =
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names its LibTorch folder (DEP_TCH_LIBTORCH_LIB)");
    let root = std::path::Path::new(&lib).parent().expect("LibTorch's lib folder has a parent").to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let cuda = cuda_home(&root);
    let cudart = ["lib64", "lib"]
        .iter()
        .map(|d| cuda.join(d))
        .flat_map(|d| std::fs::read_dir(&d).into_iter().flatten().flatten().map(move |e| (d.clone(), e.file_name())))
        .find(|(_, f)| f.to_string_lossy().starts_with("libcudart.so"))
        .unwrap_or_else(|| panic!("no libcudart.so* under {}/lib64 or /lib: set CUDA_HOME", cuda.display()));
    // The shim calls c10's CUDA streams, ATen's CUDA graphs and the CUDA runtime directly.
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-search=native={}", cudart.0.display());
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-link-lib=dylib=torch_cuda");
    println!("cargo:rustc-link-lib=dylib:+verbatim={}", cudart.1.to_string_lossy());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(cuda.join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/tch_shim.cpp")
        .compile("sv_tch_shim");
}

/// The CUDA runtime's folder (headers in `include/`, the library in `lib64/` or `lib/`):
/// `CUDA_HOME`, else the `nvidia/cu*` folder of NVIDIA's wheels beside a pip-installed torch
/// (`site-packages/torch` → `site-packages/nvidia/cu13`), else `/usr/local/cuda`.
#[cfg(feature = "tch")]
fn cuda_home(torch_root: &std::path::Path) -> std::path::PathBuf {
    if let Some(home) = std::env::var_os("CUDA_HOME").filter(|h| !h.is_empty()) {
        return home.into();
    }
    let wheels = torch_root.parent().map(|p| p.join("nvidia"));
    let mut found: Vec<_> = wheels
        .and_then(|w| std::fs::read_dir(w).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("include/cuda_runtime_api.h").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| "/usr/local/cuda".into())
}
