"""Compile the tch build's FP8 and INT8 quantiser sources with NVRTC, as tch_quant.rs
concatenates them, on a machine without a GPU or LibTorch (NVRTC only: the nvidia-cuda-nvrtc
wheel's lib folder).

    LD_LIBRARY_PATH=$NV/lib python3 benchmarks/nvrtc_check.py $NV/lib/libnvrtc.so.13

Exits non-zero, printing NVRTC's log, when a source does not compile.
"""
import ctypes, re, sys

src = open(__file__.rsplit("/", 2)[0] + "/crates/sv-model/src/backbone/tch_quant.rs").read()
consts = dict(re.findall(r'const (\w+): &str = r#"(.*?)"#;', src, re.S))
lib = ctypes.CDLL(sys.argv[1])
failed = 0
for m in re.finditer(r'Self::(\w+) => \(format!\("((?:\{\w+\})+)"\), "(compute_\d+)"\)', src):
    name, parts, arch = m.group(1), re.findall(r"\{(\w+)\}", m.group(2)), m.group(3)
    code = "".join(consts[p] for p in parts).encode()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), code, b"q.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * 2)(b"--gpu-architecture=" + arch.encode(), b"--std=c++14")
    rc = lib.nvrtcCompileProgram(prog, 2, opts)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    print(f"{name} ({'+'.join(parts)}, {arch}): {'ok' if rc == 0 else 'FAILED'} {log.value.decode().strip()}")
    failed += rc != 0
sys.exit(1 if failed else 0)
