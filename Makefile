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
export ORT_DYLIB_PATH ?= $(ORT_LIB)
export AUTOPATH_PYTHONPATH := $(CURDIR)/$(PYDEPS)

.PHONY: setup build test demo lint clean-deps

setup: $(STAMP)

# Re-installs only when the requirements change.
$(STAMP): python/requirements.txt
	@mkdir -p $(DEPS)
	@rm -rf $(PYDEPS).tmp
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-warn-script-location --target $(PYDEPS).tmp -r python/requirements.txt
	@rm -rf $(PYDEPS) && mv $(PYDEPS).tmp $(PYDEPS)
	@test -f $(ORT_LIB) || { echo "onnxruntime wheel did not provide $(ORT_LIB)"; exit 1; }
	@touch $@

build: setup
	$(CARGO) build --release --bins

test: setup
	$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The demo runs the runtime in-process, so only the `autopath` binary is built.
demo: setup
	$(CARGO) build --release --bin autopath
	./target/release/autopath demo --out demo-out

clean-deps:
	rm -rf $(DEPS)
