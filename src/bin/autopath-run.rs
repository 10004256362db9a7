//! `autopath-run`: the deployable runtime. Links ONNX Runtime (loaded at start-up), never Candle.

use std::process::ExitCode;

use clap::Parser;

use autopath::cli::report;

#[derive(Parser)]
#[command(name = "autopath-run", version, about = "Run a compiled AutoPath bundle on NIfTI volumes with ONNX Runtime.")]
struct Cli {
    /// Load ONNX Runtime, print where it came from and its version, and exit.
    #[arg(long)]
    check_ort: bool,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.check_ort {
        let (path, _) = autopath::onnxruntime::load(None)?;
        println!("ONNX Runtime loaded from {}", path.display());
        println!("{}", autopath::onnxruntime::build_info()?);
        return Ok(());
    }
    anyhow::bail!("no bundle given: the bundle runtime is not built yet (see the README's status); `--check-ort` verifies the ONNX Runtime install")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}
