//! Finding and loading the ONNX Runtime shared library, with an error that says how to fix a missing one.
//!
//! ort's `init()` panics when the library is missing, so we always load it explicitly with
//! `ort::init_from`. Search order: `ORT_DYLIB_PATH`, then the project's `.deps/` folder (where
//! `make setup` installs the `onnxruntime` PyPI wheel), then `.deps/` next to the executable's
//! project (for binaries copied out of `target/`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The ONNX Runtime release the project is built and tested against (PyPI `onnxruntime`).
pub const ORT_VERSION: &str = "1.31.1";

/// Where `make setup` puts the wheel's library, relative to the project root.
pub const PROJECT_LIBRARY: &str = ".deps/python/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The one command that installs the library.
pub const FIX_HINT: &str = "run `make setup` in the autopath project folder (it installs onnxruntime==1.31.1 from PyPI into .deps/), or set ORT_DYLIB_PATH to a libonnxruntime.so of version >= 1.24";

fn candidates() -> Vec<PathBuf> {
    let mut out = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(PROJECT_LIBRARY)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{release,debug}/autopath-run → project root two levels up.
        for up in exe.ancestors().skip(1).take(4) {
            out.push(up.join(PROJECT_LIBRARY));
        }
    }
    out
}

/// Resolves the library path without loading it.
pub fn library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::OnnxRuntime(format!("ORT_DYLIB_PATH={} does not name a file; {FIX_HINT}", p.display())));
    }
    candidates()
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::OnnxRuntime(format!("the ONNX Runtime library was not found; {FIX_HINT}")))
}

static LOADED: OnceLock<std::result::Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

/// Loads ONNX Runtime once per process; returns the library path and the process-wide environment
/// that every session is created in.
///
/// The environment gets one global thread pool with spinning off, shared by every session: with a
/// spinning pool per session, a chain of block sessions fights over the cores and runs several times
/// slower than one graph. `threads` sizes that pool on the first call.
pub fn load(threads: Option<usize>) -> Result<(&'static Path, &'static ort::environment::Environment)> {
    let loaded = LOADED.get_or_init(|| {
        let path = library_path().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path).map_err(|e| format!("cannot load {}: {e}; {FIX_HINT}", path.display()))?;
        let mut pool = ort::environment::GlobalThreadPoolOptions::default();
        pool = pool.with_spin_control(false).map_err(|e| e.to_string())?;
        if let Some(n) = threads {
            pool = pool.with_intra_threads(n).map_err(|e| e.to_string())?;
        }
        let env = builder.with_name("autopath").with_global_thread_pool(pool).build().map_err(|e| e.to_string())?;
        Ok((path, env))
    });
    match loaded {
        Ok((p, env)) => Ok((p.as_path(), env)),
        Err(e) => Err(Error::OnnxRuntime(e.clone())),
    }
}

/// The loaded library's build description (loads it if needed).
pub fn build_info() -> Result<String> {
    load(None)?;
    Ok(ort::info().to_string())
}
