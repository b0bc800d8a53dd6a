#!/bin/sh
# Builder-stage setup of family-llm-cu121: a CUDA 12.1 toolkit root at /opt/cuda for clang.
#
# PyPI has no CUDA 12 compiler driver: the nvidia-cuda-nvcc-cu12 wheels carry ptxas, libdevice and
# the crt headers, but no nvcc and no fatbinary. clang compiles the CUDA code instead, against this
# root, assembled from hash-locked wheels (all CUDA 12.1 except where noted): the runtime libraries
# from the parent's venv (base-gpu-cu121's, bound at $PARENT_VENV while a builder step runs: the
# links below resolve in the setup and compile steps only), the compiler parts from the build tools, which
# the builder stage installs under $BUILD_TOOLS:
#   include/  cuda_runtime, cublas, curand (clang's CUDA wrapper includes it) and nvcc's crt/ headers,
#             plus nv/target from cuda-cccl 12.3 (the 12.1 cccl wheels do not ship it; macros only)
#   nvvm/     libdevice, bin/ptxas: from nvidia-cuda-nvcc-cu12 12.1.105
#   lib64/    link names for cudart, cuBLAS, cuBLASLt: the wheels ship only the versioned files
#   bin/nvcc, bin/fatbinary: CUDA 13.0's, the only ones on PyPI. CMake's CUDA support queries nvcc
#             for the toolkit layout even when clang compiles; nothing is compiled by it. fatbinary
#             only bundles the cubins and PTX that ptxas 12.1 and clang produced, uncompressed.
set -eu
nv=$PARENT_VENV/lib/python3.11/site-packages/nvidia
tools=$BUILD_TOOLS/lib/python3.11/site-packages/nvidia
root=/opt/cuda
mkdir -p "$root/bin" "$root/include" "$root/lib64"

for d in "$nv/cuda_runtime" "$nv/cublas" "$nv/curand" "$tools/cuda_nvcc"; do
  for f in "$d/include"/*; do
    case "$f" in */__init__.py|*/__pycache__) continue ;; esac
    ln -s "$f" "$root/include/"
  done
done
ln -s "$tools/cuda_cccl/include/nv" "$root/include/nv"
ln -s "$tools/cuda_nvcc/nvvm" "$root/nvvm"
ln -s "$tools/cuda_nvcc/bin/ptxas" "$root/bin/ptxas"
for lib in cuda_runtime/lib/libcudart.so.12 cublas/lib/libcublas.so.12 cublas/lib/libcublasLt.so.12; do
  name=$(basename "$lib" .12)
  ln -s "$nv/$lib" "$root/lib64/$name"
done

# nvcc finds its profile next to its own path, which must be in this root (TOP = bin/..).
cp "$tools/cu13/bin/nvcc" "$tools/cu13/bin/nvcc.profile" "$root/bin/"
ln -s "$tools/cu13/bin/fatbinary" "$root/bin/fatbinary-cuda13"
# clang names images --image=profile=sm_NN|compute_NN,file=F; CUDA 13's fatbinary takes
# --image3=kind=elf|ptx,sm=NN,file=F. Compression is off: CUDA 12.1-era drivers load plain images.
cat > "$root/bin/fatbinary" <<'EOF'
#!/bin/sh
set -eu
for a in "$@"; do
  shift
  case "$a" in
    --image=profile=sm_*) r=${a#--image=profile=sm_}; set -- "$@" "--image3=kind=elf,sm=${r%%,file=*},file=${r#*,file=}" ;;
    --image=profile=compute_*) r=${a#--image=profile=compute_}; set -- "$@" "--image3=kind=ptx,sm=${r%%,file=*},file=${r#*,file=}" ;;
    *) set -- "$@" "$a" ;;
  esac
done
exec "$(dirname "$0")/fatbinary-cuda13" "$@" --compress=false
EOF
chmod 0755 "$root/bin/fatbinary"

# CMake has to know the CUDA toolkit before llama.cpp's find_package(CUDAToolkit), which runs
# ahead of its enable_language(CUDA): CMAKE_PROJECT_INCLUDE loads this into the top project.
echo 'enable_language(CUDA)' > "$root/enable-cuda.cmake"

"$root/bin/ptxas" --version | tail -1
"$root/bin/nvcc" --version | tail -1
clang++-19 --version | head -1
