//! `bench`: end-to-end benchmark scenarios and the generated tables of BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p bench -- suite            # N ∈ {100, 1,000, 10,000} × {4, 7} validators
//! cargo run --release -p bench -- scale --devices 1000 --validators 4 --json out.json
//! cargo run --release -p bench -- tables           # BENCHMARKS.md from bench/results/*.json
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use bench::scale::{self, Scenario};
use bench::tables::mib;
use clap::{Parser, Subcommand};

/// gridproof's end-to-end benchmarks: validators in their own processes, N devices, one real
/// gateway; JSON results and the BENCHMARKS.md tables made from them.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One scenario: N devices submit one proven update each; prints and writes the figures.
    Scale {
        /// Devices.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Validators (each its own process).
        #[arg(long, default_value_t = 4)]
        validators: u16,
        /// Slots T.
        #[arg(long, default_value_t = 96)]
        slots: usize,
        /// First QUIC port (HTTP uses +100).
        #[arg(long, default_value_t = 17800)]
        port: u16,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Every scenario of the suite (each in a fresh process; a failed one is reported and left
    /// out), then the tables.
    Suite {
        /// Device counts.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        devices: Vec<usize>,
        /// Validator counts.
        #[arg(long, value_delimiter = ',', default_value = "4,7")]
        validators: Vec<u16>,
        /// Slots T.
        #[arg(long, default_value_t = 96)]
        slots: usize,
        /// Where the JSON results go.
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// The file whose generated section is rewritten.
        #[arg(long, default_value = "BENCHMARKS.md")]
        benchmarks: PathBuf,
        /// First QUIC port of the first scenario (each scenario uses 200 more).
        #[arg(long, default_value_t = 18000)]
        port: u16,
    },
    /// Rewrites the generated section of BENCHMARKS.md (and bench/results/scale.svg) from the
    /// JSON results.
    Tables {
        /// Where the JSON results are.
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// The file whose generated section is rewritten.
        #[arg(long, default_value = "BENCHMARKS.md")]
        benchmarks: PathBuf,
    },
    /// (Internal) one validator of a scenario, until standard input closes.
    #[command(hide = true)]
    Validator {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        index: u16,
        #[arg(long)]
        validators: u16,
        #[arg(long)]
        port: u16,
    },
    /// (Internal) the gateway of a scenario, until the market is final.
    #[command(hide = true)]
    Gateway {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Scale { devices, validators, slots, port, json } => scale_cmd(Scenario { devices, validators, slots, port }, json),
        Cmd::Suite { devices, validators, slots, results, benchmarks, port } => suite(&devices, &validators, slots, &results, &benchmarks, port),
        Cmd::Tables { results, benchmarks } => bench::tables::regenerate(&results, &benchmarks)
            .map_err(|e| e.to_string())
            .map(|()| println!("{} regenerated from {}", benchmarks.display(), results.display())),
        Cmd::Validator { dir, index, validators, port } => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
                .with_writer(std::io::stderr)
                .init();
            scale::validator_process(&dir, index, validators, port)
        }
        Cmd::Gateway { dir } => scale::gateway_process(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scale_cmd(s: Scenario, json: Option<PathBuf>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let r = scale::run(s, &exe)?;
    let rss: Vec<String> = r.validators.iter().map(|v| format!("{:.0}", mib(v.peak_rss_kib))).collect();
    println!("N {} devices (+1 gateway), {} validators, T = {}", s.devices, s.validators, s.slots);
    println!("  iteration 1: {} updates; deadline → committed at a subscriber: {} ms", r.included, r.deadline_to_commit_ms);
    println!("  baseline: batch verification of the N proofs in-process {:.0} ms ({:.0} proofs/s)", r.baseline_batch_verify_ms, r.batch_verify_proofs_per_s);
    println!("  admitted and pre-verified: {:.0} submissions per s per validator", r.admitted_per_s_per_validator);
    println!(
        "  peak RSS: validators {} MiB, gateway {:.0} MiB; entry {:.2} MB; {:.0} s",
        rss.join(" / "),
        mib(r.gateway.peak_rss_kib),
        r.entry_bytes as f64 / 1e6,
        r.wall_s
    );
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if r.included != s.devices + 1 {
        return Err(format!("{} updates committed, {} expected", r.included, s.devices + 1));
    }
    Ok(())
}

fn suite(devices: &[usize], validators: &[u16], slots: usize, results: &std::path::Path, benchmarks: &std::path::Path, port: u16) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(results).map_err(|e| format!("{}: {e}", results.display()))?;
    let mut i = 0u16;
    let mut failed = vec![];
    for &v in validators {
        for &n in devices {
            let json = results.join(format!("scale-{n}-{v}.json"));
            eprintln!("== N = {n}, {v} validators");
            let status = std::process::Command::new(&exe)
                .args([
                    "scale",
                    "--devices",
                    &n.to_string(),
                    "--validators",
                    &v.to_string(),
                    "--slots",
                    &slots.to_string(),
                    "--port",
                    &(port + 200 * i).to_string(),
                    "--json",
                ])
                .arg(&json)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                // The other scenarios still run; a failed one leaves no result file.
                let _ = std::fs::remove_file(&json);
                failed.push(format!("N = {n}, {v} validators ({status})"));
            }
            i += 1;
        }
    }
    bench::tables::regenerate(results, benchmarks).map_err(|e| e.to_string())?;
    println!("{} regenerated from {}", benchmarks.display(), results.display());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("scenarios failed (not in the table): {}", failed.join("; ")))
    }
}
