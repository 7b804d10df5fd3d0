//! `keys`: gridproof's trusted-setup command line. Run `keys --help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use circuits::{ModelKind, Shape, Slots};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use keys::files::{self, write_atomic};
use keys::lagrange::Prepared;
use keys::phase1::Phase1;
use keys::phase2::Phase2;
use keys::pok::hex;
use prover::{SetupKind, UpdateProvingKey, UpdateVerifyingKey};

/// Trusted setup for gridproof's Groth16 circuits.
///
/// Production keys come from a ceremony: phase 1 (powers of tau, reusable by every circuit)
/// and phase 2 (one per circuit shape: model and slot count T). One honest participant
/// suffices; every contribution prints a hash to publish, and `verify` re-checks everything.
/// `dev-setup` makes single-party keys for development only.
#[derive(Parser)]
#[command(name = "keys", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Model {
    Deferrable,
    Battery,
    Producer,
    Thermal,
}

impl From<Model> for ModelKind {
    fn from(m: Model) -> ModelKind {
        match m {
            Model::Deferrable => ModelKind::Deferrable,
            Model::Battery => ModelKind::Battery,
            Model::Producer => ModelKind::Producer,
            Model::Thermal => ModelKind::Thermal,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Single-party keys for development. Whoever runs this can forge proofs: NOT FOR PRODUCTION.
    DevSetup {
        /// Device model; repeat for several (none: all four, as `device simulate`'s
        /// household mix needs).
        #[arg(long, value_enum)]
        model: Vec<Model>,
        /// Slot count T (1..=288).
        #[arg(long)]
        slots: usize,
        /// Output directory for `<model>-<T>.pk`, `<model>-<T>.vk` and `<model>-<T>.vk.json`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Phase 1: powers of tau.
    #[command(subcommand)]
    Ptau(PtauCommand),
    /// Phase 2: per-circuit keys.
    #[command(subcommand)]
    Phase2(Phase2Command),
    /// Writes one circuit as an iden3 `.r1cs` file, for a phase 2 run with snarkjs or p0tion
    /// (`snarkjs zkey new <file>.r1cs <prepared>.ptau out.zkey`). Wire 0 is the constant one,
    /// then the public inputs in gridproof's order, then the witness.
    R1cs {
        /// Device model.
        #[arg(long, value_enum)]
        model: Model,
        /// Slot count T (1..=288).
        #[arg(long)]
        slots: usize,
        /// The `.r1cs` file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Arguments of a contribution, in either phase.
#[derive(Args)]
struct ContributeArgs {
    /// The transcript to build on.
    #[arg(long = "in")]
    input: PathBuf,
    /// The new transcript.
    #[arg(long)]
    out: PathBuf,
    /// Your name, recorded in the transcript.
    #[arg(long, default_value = "anonymous")]
    name: String,
    /// Extra entropy text.
    #[arg(long, default_value = "")]
    entropy: String,
}

/// Arguments of a beacon contribution, in either phase.
#[derive(Args)]
struct BeaconArgs {
    /// The transcript to build on.
    #[arg(long = "in")]
    input: PathBuf,
    /// The new transcript.
    #[arg(long)]
    out: PathBuf,
    /// The beacon value, 64 hex digits.
    #[arg(long)]
    beacon: String,
    /// SHA-256 is iterated 2^this times over the beacon.
    #[arg(long, default_value_t = 10)]
    iterations_exp: u8,
}

#[derive(Subcommand)]
enum PtauCommand {
    /// Starts a transcript with 2^power powers (the circuit's domain must fit).
    New {
        /// log2 of the number of powers (1..=24); 2^14 fits every model at T = 96.
        #[arg(long)]
        power: u32,
        /// The new transcript.
        #[arg(long)]
        out: PathBuf,
    },
    /// Adds your contribution (secrets from the OS RNG, mixed with optional text).
    Contribute(ContributeArgs),
    /// Adds a final contribution from a public beacon value.
    Beacon(BeaconArgs),
    /// Verifies the whole transcript and lists its contributions (a prepared file: also its
    /// Lagrange bases).
    Verify {
        /// The transcript (`ptau new`/`contribute`/`beacon`/`import` or `prepare` output).
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// Computes the Lagrange bases phase 2 needs, once, into a final prepared file (as snarkjs's
    /// `powersoftau prepare phase2`): `phase2 new`, `verify` and `export` then skip the inverse
    /// FFTs in the exponent that dominate them. Whoever reads a prepared file checks the bases
    /// against the powers (one random linear combination each), so a wrong file is refused,
    /// never used. Prepare after the last contribution (and beacon): a contribution to a
    /// prepared file writes an unprepared one. The transcript itself is not verified here
    /// (`ptau verify` does).
    Prepare {
        /// The phase-1 transcript.
        #[arg(long = "in")]
        input: PathBuf,
        /// The prepared file to write.
        #[arg(long)]
        out: PathBuf,
        /// log2 of the domain sizes to prepare, comma-separated (default: every size from 2^1
        /// to the transcript's 2^power; a circuit's domain is the power of two at or above its
        /// constraints plus public inputs, 2^13 or 2^14 at T = 96).
        #[arg(long, value_delimiter = ',')]
        domains: Vec<u32>,
    },
    /// Imports a snarkjs `.ptau` file (verify it with `snarkjs powersoftau verify` first). A
    /// file from `snarkjs powersoftau prepare phase2` becomes a prepared file (its Lagrange
    /// bases checked against its powers), like the output of `ptau prepare`.
    Import {
        /// The snarkjs file.
        #[arg(long)]
        snarkjs: PathBuf,
        /// The gridproof transcript to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Phase2Command {
    /// Starts phase 2 for one circuit from a phase-1 transcript.
    New {
        /// The phase-1 transcript (prepared or not).
        #[arg(long)]
        ptau: PathBuf,
        /// Device model.
        #[arg(long, value_enum)]
        model: Model,
        /// Slot count T.
        #[arg(long)]
        slots: usize,
        /// The new phase-2 transcript.
        #[arg(long)]
        out: PathBuf,
    },
    /// Adds your contribution (secrets from the OS RNG, mixed with optional text).
    Contribute(ContributeArgs),
    /// Verifies phase 1, the circuit and every contribution.
    Verify {
        /// The phase-2 transcript.
        #[arg(long = "in")]
        input: PathBuf,
        /// The phase-1 transcript it started from (prepared or not).
        #[arg(long)]
        ptau: PathBuf,
    },
    /// Adds the final beacon contribution.
    Finalize(BeaconArgs),
    /// Writes gridproof key files from a snarkjs Groth16 `.zkey` made on `keys r1cs`'s file
    /// for the same model and T (a phase 2 run with snarkjs or p0tion). Check it first with
    /// `snarkjs zkey verify <file>.r1cs <prepared>.ptau <file>.zkey`: this import checks the
    /// key's points and that it is for this circuit (wires, public inputs, domain), not its
    /// contribution chain. Proofs with it use snarkjs's QAP reduction.
    ImportZkey {
        /// The `.zkey` file.
        #[arg(long)]
        zkey: PathBuf,
        /// Device model.
        #[arg(long, value_enum)]
        model: Model,
        /// Slot count T.
        #[arg(long)]
        slots: usize,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verifies, then writes the proving and verifying key files and the snarkjs verifying key.
    Export {
        /// The phase-2 transcript.
        #[arg(long = "in")]
        input: PathBuf,
        /// The phase-1 transcript (prepared or not).
        #[arg(long)]
        ptau: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs `f` under a spinner on stderr.
fn step<T>(msg: &str, f: impl FnOnce() -> T) -> T {
    let pb = spinner(msg);
    let out = f();
    pb.finish_and_clear();
    eprintln!("{msg}: done");
    out
}

type Result<T> = std::result::Result<T, String>;

fn shape(model: Model, slots: usize) -> Result<Shape> {
    Ok(Shape { kind: model.into(), slots: Slots::new(slots).map_err(|e| e.to_string())? })
}

fn beacon_value(hex_str: &str) -> Result<[u8; 32]> {
    let bytes: Vec<u8> = (0..hex_str.len())
        .step_by(2)
        .map(|i| hex_str.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("--beacon: `{hex_str}` is not hex"))?;
    bytes.try_into().map_err(|_| "--beacon: expected 64 hex digits (32 bytes)".to_string())
}

fn key_files(out: &Path, shape: Shape, pk: &UpdateProvingKey, vk: &UpdateVerifyingKey) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let stem = format!("{}-{}", shape.kind, shape.slots);
    let json = serde_json::to_vec_pretty(&prover::snarkjs::export_verifying_key(vk.inner())).expect("json");
    for (name, bytes) in [(format!("{stem}.pk"), pk.to_bytes()), (format!("{stem}.vk"), vk.to_bytes()), (format!("{stem}.vk.json"), json)] {
        let path = out.join(&name);
        write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// A transcript to contribute to or prepare. A prepared file's bases are dropped: they would
/// not match the powers after a contribution.
fn load1(path: &Path) -> Result<Phase1> {
    let p = load_powers(path)?;
    if !p.powers().is_empty() {
        eprintln!("note: {} is prepared; the Lagrange bases are dropped (run `keys ptau prepare` on the result)", path.display());
    }
    Ok(p.phase1().clone())
}

/// A phase-1 transcript to start or check phase 2 from, prepared or not (prepared bases are
/// checked against the powers while reading).
fn load_powers(path: &Path) -> Result<Prepared> {
    step(&format!("reading {}", path.display()), || files::load_any_phase1(path)).map_err(|e| e.to_string())
}

fn load2(path: &Path) -> Result<Phase2> {
    step(&format!("reading {}", path.display()), || files::load_phase2(path)).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<()> {
    let mut rng = rand::rngs::OsRng;
    match cli.command {
        Command::DevSetup { model, slots, out } => {
            let models = if model.is_empty() { vec![Model::Deferrable, Model::Battery, Model::Producer, Model::Thermal] } else { model };
            for model in models {
                let shape = shape(model, slots)?;
                eprintln!("WARNING: single-party development setup for {} with T = {}. Whoever ran it knows the trapdoor", shape.kind, shape.slots);
                eprintln!("WARNING: and can forge any proof. The key header says so. NOT FOR PRODUCTION.");
                let (pk, vk) = step("generating keys", || prover::setup(shape, &mut rng)).map_err(|e| e.to_string())?;
                key_files(&out, shape, &pk, &vk)?;
            }
            Ok(())
        }
        Command::R1cs { model, slots, out } => {
            let shape = shape(model, slots)?;
            let bytes = step("synthesizing the circuit", || keys::r1cs::export(shape)).map_err(|e| e.to_string())?;
            write_atomic(&out, &bytes).map_err(|e| e.to_string())?;
            println!("{} with T = {}: {} ({} bytes)", shape.kind, shape.slots, out.display(), bytes.len());
            Ok(())
        }
        Command::Ptau(PtauCommand::New { power, out }) => {
            let p = Phase1::new(power).map_err(|e| e.to_string())?;
            step("writing", || files::save_phase1(&out, &p)).map_err(|e| e.to_string())?;
            println!("new powers-of-tau transcript with 2^{power} powers: {}", out.display());
            Ok(())
        }
        Command::Ptau(PtauCommand::Contribute(ContributeArgs { input, out, name, entropy })) => {
            let mut p = load1(&input)?;
            let h = step("contributing (tau, alpha, beta)", || p.contribute(&name, entropy.as_bytes(), &mut rng));
            step("writing", || files::save_phase1(&out, &p)).map_err(|e| e.to_string())?;
            println!("contribution {} by {name:?}: {}", p.contributions.len(), hex(&h));
            Ok(())
        }
        Command::Ptau(PtauCommand::Beacon(BeaconArgs { input, out, beacon, iterations_exp })) => {
            let value = beacon_value(&beacon)?;
            let mut p = load1(&input)?;
            let h = step("applying the beacon", || p.beacon(value, iterations_exp));
            step("writing", || files::save_phase1(&out, &p)).map_err(|e| e.to_string())?;
            println!("beacon contribution {}: {}", p.contributions.len(), hex(&h));
            Ok(())
        }
        Command::Ptau(PtauCommand::Verify { input }) => {
            let prepared = load_powers(&input)?;
            let p = prepared.phase1();
            step("verifying", || p.verify()).map_err(|e| format!("REJECTED: {e}"))?;
            for (i, c) in p.contributions.iter().enumerate() {
                println!("contribution {i} {:?}{}: {}", c.name, if c.beacon.is_some() { " (beacon)" } else { "" }, hex(&c.hash));
            }
            println!("OK: powers-of-tau transcript with 2^{} powers and {} contributions verifies", p.accumulator.power, p.contributions.len());
            let powers = prepared.powers();
            if !powers.is_empty() {
                let list: Vec<String> = powers.iter().map(|p| format!("2^{p}")).collect();
                println!("OK: prepared Lagrange bases for the domains {} match the powers", list.join(", "));
            }
            Ok(())
        }
        Command::Ptau(PtauCommand::Prepare { input, out, domains }) => {
            let p = load1(&input)?;
            let prepared = step("computing the Lagrange bases", || Prepared::prepare(p, &domains)).map_err(|e| e.to_string())?;
            step("writing", || files::save_prepared(&out, &prepared)).map_err(|e| e.to_string())?;
            let list: Vec<String> = prepared.powers().iter().map(|p| format!("2^{p}")).collect();
            println!("prepared the Lagrange bases of the domains {}: {}", list.join(", "), out.display());
            Ok(())
        }
        Command::Ptau(PtauCommand::Import { snarkjs, out }) => {
            let bytes = std::fs::read(&snarkjs).map_err(|e| format!("{}: {e}", snarkjs.display()))?;
            let p = step("importing", || keys::snarkjs::import_prepared(&bytes)).map_err(|e| format!("{}: {e}", snarkjs.display()))?;
            step("checking the powers", || p.phase1().verify()).map_err(|e| format!("REJECTED: {e}"))?;
            let power = p.accumulator().power;
            if p.powers().is_empty() {
                step("writing", || files::save_phase1(&out, p.phase1())).map_err(|e| e.to_string())?;
                println!("imported 2^{power} powers from {} into {}", snarkjs.display(), out.display());
            } else {
                step("writing", || files::save_prepared(&out, &p)).map_err(|e| e.to_string())?;
                println!("imported 2^{power} powers and the prepared Lagrange bases of 2^1 to 2^{power} from {} into {}", snarkjs.display(), out.display());
            }
            Ok(())
        }
        Command::Phase2(Phase2Command::New { ptau, model, slots, out }) => {
            let shape = shape(model, slots)?;
            let p1 = load_powers(&ptau)?;
            let p = step("computing the circuit's initial key", || Phase2::new(&p1, shape)).map_err(|e| e.to_string())?;
            step("writing", || files::save_phase2(&out, &p)).map_err(|e| e.to_string())?;
            println!("phase 2 for {} with T = {}: {}", shape.kind, shape.slots, out.display());
            Ok(())
        }
        Command::Phase2(Phase2Command::Contribute(ContributeArgs { input, out, name, entropy })) => {
            let mut p = load2(&input)?;
            let h = step("contributing (delta)", || p.contribute(&name, entropy.as_bytes(), &mut rng));
            step("writing", || files::save_phase2(&out, &p)).map_err(|e| e.to_string())?;
            println!("contribution {} by {name:?}: {}", p.contributions.len(), hex(&h));
            Ok(())
        }
        Command::Phase2(Phase2Command::Verify { input, ptau }) => {
            let (p1, p2) = (load_powers(&ptau)?, load2(&input)?);
            step("verifying phase 1", || p1.phase1().verify()).map_err(|e| format!("REJECTED: phase 1: {e}"))?;
            step("verifying phase 2", || p2.verify(&p1)).map_err(|e| format!("REJECTED: {e}"))?;
            for (i, c) in p2.contributions.iter().enumerate() {
                println!("contribution {i} {:?}{}: {}", c.name, if c.beacon.is_some() { " (beacon)" } else { "" }, hex(&c.hash));
            }
            println!("OK: phase 2 transcript with {} contributions verifies", p2.contributions.len());
            Ok(())
        }
        Command::Phase2(Phase2Command::Finalize(BeaconArgs { input, out, beacon, iterations_exp })) => {
            let value = beacon_value(&beacon)?;
            let mut p = load2(&input)?;
            let h = step("applying the beacon", || p.beacon(value, iterations_exp));
            step("writing", || files::save_phase2(&out, &p)).map_err(|e| e.to_string())?;
            println!("beacon contribution {}: {}", p.contributions.len(), hex(&h));
            Ok(())
        }
        Command::Phase2(Phase2Command::ImportZkey { zkey, model, slots, out }) => {
            let shape = shape(model, slots)?;
            let bytes = std::fs::read(&zkey).map_err(|e| format!("{}: {e}", zkey.display()))?;
            let pk = step("importing", || keys::snarkjs::import_zkey(&bytes, shape)).map_err(|e| format!("{}: {e}", zkey.display()))?;
            let pk = UpdateProvingKey::new(pk, shape, SetupKind::Ceremony).map_err(|e| format!("{}: {e}", zkey.display()))?;
            let vk = pk.verifying_key();
            eprintln!("note: the contribution chain of {} is not checked here; `snarkjs zkey verify` checks it", zkey.display());
            key_files(&out, shape, &pk, &vk)
        }
        Command::Phase2(Phase2Command::Export { input, ptau, out }) => {
            let (p1, p2) = (load_powers(&ptau)?, load2(&input)?);
            step("verifying phase 1", || p1.phase1().verify()).map_err(|e| format!("REJECTED: phase 1: {e}"))?;
            let (pk, vk) = step("verifying phase 2", || p2.export(&p1)).map_err(|e| format!("REJECTED: {e}"))?;
            let shape = p2.shape().map_err(|e| e.to_string())?;
            if p2.contributions.is_empty() {
                eprintln!("WARNING: no contributions: these keys are as weak as a development setup");
            }
            key_files(&out, shape, &pk, &vk)?;
            debug_assert_eq!(pk.setup(), SetupKind::Ceremony);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
