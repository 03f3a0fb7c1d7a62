# Sourced by the device scripts: puts the GPU machine's PyTorch libraries and NVIDIA's wheel
# libraries beside them (NVRTC for our fused kernels, cuDNN, cuBLAS) on LD_LIBRARY_PATH, for
# binaries of the `tch` build. Adds nothing where Python has no torch.
TORCH_LIBS=$(python3 -c 'import glob, os, torch
here = os.path.dirname(torch.__file__)
print(":".join([os.path.join(here, "lib")] + sorted(glob.glob(os.path.dirname(here) + "/nvidia/*/lib"))))' 2>/dev/null || true)
export LD_LIBRARY_PATH="$TORCH_LIBS${LD_LIBRARY_PATH:+${TORCH_LIBS:+:}$LD_LIBRARY_PATH}"
