//! Pieces shared by the two binaries: progress bars and error reporting.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A progress bar that draws only on a terminal and never with `--quiet`.
pub fn progress(len: u64, message: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// Prints an error with its causes on one line and returns the process exit code.
pub fn report(err: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {err:#}");
    std::process::ExitCode::from(1)
}

/// Parses `D,H,W` (or `DxHxW`).
pub fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split([',', 'x']).map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!("expected D,H,W, got {s:?}"));
    }
    let mut out = [0; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.parse().map_err(|_| format!("{p:?} in {s:?} is not a whole number"))?;
        if *o == 0 {
            return Err(format!("{s:?} has a zero extent"));
        }
    }
    Ok(out)
}
