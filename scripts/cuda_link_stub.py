#!/usr/bin/env python3
"""Writes a stub `libcuda.so` for linking a CUDA build on a machine without an NVIDIA driver.

Why: Candle links the CUDA driver library at build time, and no package ships `libcuda.so` (it comes
with the driver). The stub defines every driver function that cudarc declares; each returns
CUDA_ERROR_NO_DEVICE (100). Its SONAME is `libcuda.so.1`, so on a GPU machine the binary binds to the
driver's real library; here, run with the stub on the loader path, `--device cuda` fails cleanly.

Usage: cuda_link_stub.py OUT_DIR   (run from the repository; finds cudarc through `cargo metadata`)
"""
import json
import os
import re
import subprocess
import sys
import tempfile


def cudarc_driver_sys():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--features", "cuda"], text=True))
    for pkg in meta["packages"]:
        if pkg["name"] == "cudarc":
            return os.path.join(os.path.dirname(pkg["manifest_path"]), "src", "driver", "sys", "mod.rs")
    sys.exit("cuda_link_stub: cudarc is not among the dependencies of the cuda feature")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    source = open(cudarc_driver_sys(), encoding="utf-8").read()
    # Functions declared inside `extern "C" { fn cuXxx(...) }` blocks: what the linker will ask for.
    names = sorted(set(re.findall(r'extern "C" \{\s*fn (cu[A-Za-z0-9_]+)\(', source)))
    if len(names) < 100:
        sys.exit(f"cuda_link_stub: found only {len(names)} driver functions; cudarc's layout changed")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        c = os.path.join(tmp, "stub.c")
        with open(c, "w") as f:
            f.write("/* Link-time stand-in for the CUDA driver: every call reports no device. */\n")
            for n in names:
                f.write(f"int {n}(void) {{ return 100; }}\n")
        lib = os.path.join(out, "libcuda.so")
        subprocess.check_call(["cc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", lib + ".tmp", c])
        os.replace(lib + ".tmp", lib)
    link = os.path.join(out, "libcuda.so.1")
    if not os.path.lexists(link):
        os.symlink("libcuda.so", link)
    print(f"cuda_link_stub: {len(names)} driver functions -> {lib}")


if __name__ == "__main__":
    main()
