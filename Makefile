# Two commands on a fresh machine with Rust and Python 3:
#   make demo   - the main job end to end
#   make test   - the test suite
# Both install what they need (ONNX Runtime and the Python checkers) into .deps/ first.

PYTHON   ?= python3
DEPS     := .deps
PYDEPS   := $(DEPS)/python
STAMP    := $(DEPS)/setup.stamp
ORT_LIB  := $(CURDIR)/$(PYDEPS)/onnxruntime/capi/libonnxruntime.so.1.31.1
CARGO    ?= cargo
# No wheel cache: the GPU and CUDA wheels are 3.7 GB unpacked, and a cached copy of each would double
# what a clean clone's `.ci/run` writes to a disk that may be shared and nearly full.
PIP_INSTALL := $(PYTHON) -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-cache-dir
export ORT_DYLIB_PATH ?= $(ORT_LIB)
export AUTOPATH_PYTHONPATH := $(CURDIR)/$(PYDEPS)

.PHONY: setup build test demo demo-build lint clean-deps setup-cuda check-cuda setup-gpu torch torch-compare

setup: $(STAMP)

# Re-installs only when the requirements change.
$(STAMP): python/requirements.txt
	@mkdir -p $(DEPS)
	@rm -rf $(PYDEPS).tmp
	$(PIP_INSTALL) --target $(PYDEPS).tmp -r python/requirements.txt
	@rm -rf $(PYDEPS) && mv $(PYDEPS).tmp $(PYDEPS)
	@test -f $(ORT_LIB) || { echo "onnxruntime wheel did not provide $(ORT_LIB)"; exit 1; }
	@touch $@

build: setup
	$(CARGO) build --release --bins

test: setup
	$(CARGO) test --release --workspace
	@# The CPU kernels again with the AVX-512 tiles switched off: on a CPU with AVX-512 this tests the
	@# AVX2 path that CPUs without it take (the same test binaries; no rebuild).
	AUTOPATH_CPU_ISA=avx2 $(CARGO) test --release -p autopath-models

lint:
	$(CARGO) fmt --all --check
	@# --release: shares build scripts and proc-macros with `make test`'s build.
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# The demo runs the runtime in-process, so only the `autopath` binary is built, without the HTTP
# service (`autopath-run serve`) and its async stack; ONNX Runtime installs while it builds (the
# build does not need it: ort loads the library at run time).
demo:
	@$(MAKE) --no-print-directory -j2 setup demo-build
	./target/release/autopath demo --out demo-out

demo-build:
	$(CARGO) build --release --bin autopath --no-default-features --features train

clean-deps:
	rm -rf $(DEPS)

# --- GPU ONNX Runtime (for autopath-run --ep cuda|tensorrt) ------------------------------------------
# onnxruntime-gpu with the CUDA 13 and cuDNN 9 libraries it needs, in its own folder (the CPU and GPU
# wheels install into the same onnxruntime/ package and would overwrite each other). The runtime finds
# the NVIDIA libraries beside it and loads them itself: no LD_LIBRARY_PATH. Use it with
#   ORT_DYLIB_PATH=$(GPU_ORT_LIB) autopath-run --ep cuda ...
GPU_PYDEPS   := $(DEPS)/python-gpu
GPU_ORT_LIB  := $(CURDIR)/$(GPU_PYDEPS)/onnxruntime/capi/libonnxruntime.so.1.31.1
GPU_STAMP    := $(DEPS)/setup-gpu.stamp

setup-gpu: $(GPU_STAMP)

$(GPU_STAMP): python/requirements-gpu.txt
	@mkdir -p $(DEPS)
	@rm -rf $(GPU_PYDEPS).tmp
	$(PIP_INSTALL) --target $(GPU_PYDEPS).tmp -r python/requirements-gpu.txt
	@rm -rf $(GPU_PYDEPS) && mv $(GPU_PYDEPS).tmp $(GPU_PYDEPS)
	@test -f $(GPU_ORT_LIB) || { echo "onnxruntime-gpu wheel did not provide $(GPU_ORT_LIB)"; exit 1; }
	@touch $@
	@echo "GPU ONNX Runtime: ORT_DYLIB_PATH=$(GPU_ORT_LIB)"

# --- CUDA build (no GPU needed) -------------------------------------------------------------------
# The CUDA 13.0 compiler, headers and the libraries Candle links, from PyPI into .deps/cuda; a stub
# libcuda (the driver's library, which no package ships) for linking; then a release build and clippy
# with `--features cuda` in their own target folder. The binaries go to a GPU machine as they are.
CUDA_DEPS    := $(DEPS)/cuda
CUDA_HOME_   := $(CURDIR)/$(CUDA_DEPS)/nvidia/cu13
CUDA_STAMP   := $(CUDA_DEPS)/setup.stamp
CUDA_WHEELS  := nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
                nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 \
                nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
CUDA_ENV     := CUDA_HOME=$(CUDA_HOME_) PATH=$(CUDA_HOME_)/bin:$$PATH CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
CUDA_TARGET  := target/cuda

setup-cuda: $(CUDA_STAMP)

$(CUDA_STAMP): Makefile scripts/cuda_link_stub.py
	@mkdir -p $(DEPS)
	@rm -rf $(CUDA_DEPS).tmp
	$(PIP_INSTALL) --no-deps --target $(CUDA_DEPS).tmp $(CUDA_WHEELS)
	@rm -rf $(CUDA_DEPS) && mv $(CUDA_DEPS).tmp $(CUDA_DEPS)
	@cd $(CUDA_HOME_)/lib && for l in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do ln -sf lib$$l lib$${l%.so.*}.so; done
	$(PYTHON) scripts/cuda_link_stub.py $(CUDA_HOME_)/lib/stubs
	@touch $@

check-cuda: setup-cuda
	$(CUDA_ENV) $(CARGO) build --release --features cuda --bins --target-dir $(CUDA_TARGET)
	@# --release: the same profile as the build, so candle-kernels' nvcc output is reused, not rebuilt.
	$(CUDA_ENV) $(CARGO) clippy --release --features cuda --lib --bins --target-dir $(CUDA_TARGET) -- -D warnings
	@# Without a GPU (the stub driver answers "no device"), --device cuda must fail in one line.
	@out=$$(LD_LIBRARY_PATH=$(CUDA_HOME_)/lib/stubs:$(CUDA_HOME_)/lib $(CUDA_TARGET)/release/autopath train --data /nonexistent --out /nonexistent --device cuda 2>&1); \
	  echo "$$out" | grep -q "cuda:0 cannot be opened" || { echo "check-cuda: unexpected answer to --device cuda: $$out"; exit 1; }; \
	  echo "check-cuda: CUDA build ok ($$(du -h $(CUDA_TARGET)/release/autopath | cut -f1)); without a GPU: $$out"

# --- PyTorch, for scripts/torch-step-compare only (optional; 5.3 GB from PyPI; not part of make test) ---
TORCH_DEPS   := $(DEPS)/torch
TORCH_STAMP  := $(DEPS)/torch.stamp

torch: $(TORCH_STAMP)

$(TORCH_STAMP):
	@mkdir -p $(DEPS)
	@rm -rf $(TORCH_DEPS).tmp
	$(PIP_INSTALL) --target $(TORCH_DEPS).tmp torch
	@rm -rf $(TORCH_DEPS) && mv $(TORCH_DEPS).tmp $(TORCH_DEPS)
	@touch $@

# One training step of the same network in PyTorch and in Candle, in one run, with the ratios.
torch-compare: torch setup
	$(CARGO) build --release --bin autopath --no-default-features --features train
	PYTHONPATH=$(CURDIR)/$(TORCH_DEPS) $(PYTHON) scripts/torch-step-compare --autopath target/release/autopath
