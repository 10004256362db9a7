//! `autopath`: synthesise data, train, evaluate, compile and benchmark.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use autopath::cli::{parse_shape, progress, report};
use autopath::synth::{synthesize, SynthConfig};

#[derive(Parser)]
#[command(
    name = "autopath",
    version,
    about = "Image-specific 3D segmentation: train a segmenter and a block-dropping policy, compile them to ONNX, measure."
)]
struct Cli {
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write synthetic abdominal CT phantoms with liver labels in the LiTS layout.
    Synth {
        /// Output folder (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Number of cases.
        #[arg(long, default_value_t = 24)]
        cases: usize,
        /// Seed: the same seed gives the same volumes, bit for bit.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Volume shape D,H,W (slices, rows, columns).
        #[arg(long, default_value = "48,128,128", value_parser = parse_shape)]
        size: [usize; 3],
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth { out, cases, seed, size } => {
            let cfg = SynthConfig { cases, seed, size };
            let bar = progress(cases as u64, "synth", cli.quiet);
            let infos = synthesize(&out, &cfg, &|done| bar.set_position(done as u64))
                .with_context(|| format!("synthesising into {}", out.display()))?;
            bar.finish_and_clear();
            let mean_liver = infos.iter().map(|i| i.liver_fraction).sum::<f32>() / infos.len() as f32;
            println!(
                "wrote {} phantoms of {:?} to {} (mean liver fraction {:.3})",
                infos.len(),
                size,
                out.display(),
                mean_liver
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}
