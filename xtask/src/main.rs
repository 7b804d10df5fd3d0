//! `cargo xtask`: the commands README.md promises work on a fresh machine.
//!
//! * `cargo xtask setup [--check] [--for demo|test]` finds what the build (and the tests) need
//!   outside cargo — libclang for RocksDB's bindgen, a C++ compiler, and for the tests the
//!   mosquitto broker, headless Chromium, `/usr/bin/kill`, snarkjs and cargo-nextest — and
//!   installs what is missing (apt-get as root or through sudo, npm, `cargo install`).
//!   `--check` only reports.
//! * `cargo xtask demo [ARGS…]` runs setup for the build, then the local market demo
//!   (`cargo run --bin gridproof -- ARGS…`).
//! * `cargo xtask test [ARGS…]` runs setup for the tests, then the test suite
//!   (`cargo nextest run --workspace --no-fail-fast ARGS…`).
//!
//! Standard library only, so it compiles in seconds before anything it installs is there.
//! It never changes a machine silently: each install is printed before it runs, and where it
//! cannot install (not root and no sudo, or not a Debian-like system) it stops and says which
//! packages to install by hand.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const HELP: &str = "\
cargo xtask: set up a fresh machine for gridproof and run its demo or tests

USAGE:
    cargo xtask setup [--check] [--for demo|test]
    cargo xtask demo [GRIDPROOF-ARGS...]
    cargo xtask test [NEXTEST-ARGS...]

COMMANDS:
    setup   Find the system tools the build needs (libclang and a C++ compiler for RocksDB)
            and, with --for test (the default), those the tests need (mosquitto, headless
            Chromium, /usr/bin/kill, snarkjs, cargo-nextest); install what is missing with
            apt-get (as root or via sudo), npm and cargo install. --check only reports and
            exits 1 when something is missing.
    demo    setup --for demo, then `cargo run --bin gridproof -- ARGS`: two market days on
            this machine (see `cargo xtask demo --help`). The first build compiles RocksDB's
            C++ (about 25 minutes on 2 cores); later runs reuse target/.
    test    setup --for test, then `cargo nextest run --workspace --no-fail-fast ARGS`.

ENVIRONMENT:
    LIBCLANG_PATH   a directory holding libclang.so, if it is not where Debian puts it
";

/// What a command needs installed: the build only, or the build and the test suite.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    Demo,
    Test,
}

/// How a missing tool gets onto the machine.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// Debian packages.
    Apt(&'static [&'static str]),
    /// A global npm package (npm itself comes from the Debian packages `nodejs npm`).
    Npm(&'static str),
    /// `cargo install --locked <crate>`.
    Cargo(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Apt(pkgs) => write!(f, "apt-get install {}", pkgs.join(" ")),
            Source::Npm(pkg) => write!(f, "npm install -g {pkg}"),
            Source::Cargo(krate) => write!(f, "cargo install --locked {krate}"),
        }
    }
}

/// One tool outside cargo that gridproof needs, how to find it and how to install it.
struct Requirement {
    name: &'static str,
    why: &'static str,
    needed_for: Purpose,
    present: fn() -> bool,
    source: Source,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: "libclang",
        why: "the rocksdb crate generates its bindings with bindgen (libclang and clang's headers)",
        needed_for: Purpose::Demo,
        present: libclang_present,
        source: Source::Apt(&["clang", "libclang-dev"]),
    },
    Requirement {
        name: "a C++ compiler",
        why: "RocksDB is C++, built by the librocksdb-sys crate",
        needed_for: Purpose::Demo,
        // What the cc crate runs: $CXX, else `c++`.
        present: || env::var_os("CXX").is_some() || on_path("c++").is_some(),
        source: Source::Apt(&["g++"]),
    },
    Requirement {
        name: "mosquitto",
        why: "the device actuation tests start their own Mosquitto brokers",
        needed_for: Purpose::Test,
        present: || {
            ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"].iter().any(|p| Path::new(p).is_file()) || on_path("mosquitto").is_some()
        },
        source: Source::Apt(&["mosquitto"]),
    },
    Requirement {
        name: "headless Chromium",
        why: "the status-page test renders the validator's page",
        needed_for: Purpose::Test,
        present: || ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].iter().any(|p| Path::new(p).is_file()),
        source: Source::Apt(&["chromium"]),
    },
    Requirement {
        name: "kill",
        why: "the validator process tests send SIGKILL, SIGSTOP and SIGCONT with /usr/bin/kill",
        needed_for: Purpose::Test,
        present: || Path::new("/usr/bin/kill").is_file() || Path::new("/bin/kill").is_file(),
        source: Source::Apt(&["procps"]),
    },
    Requirement {
        name: "snarkjs",
        why: "the interop tests check exported proofs and imported ceremonies with snarkjs",
        needed_for: Purpose::Test,
        present: || on_path("snarkjs").is_some(),
        source: Source::Npm("snarkjs"),
    },
    Requirement {
        name: "cargo-nextest",
        why: "README's test command runs the suite with nextest",
        needed_for: Purpose::Test,
        present: || on_path("cargo-nextest").is_some(),
        source: Source::Cargo("cargo-nextest"),
    },
];

/// Why setup stopped.
#[derive(Debug)]
enum SetupError {
    /// Something is missing and `--check` asked not to install.
    Missing(Vec<String>),
    /// Packages are needed but this machine has no apt-get.
    NoApt(Vec<&'static str>),
    /// apt-get needs root, and there is no sudo.
    NotRoot(Vec<&'static str>),
    /// An install command ran and failed.
    InstallFailed { command: String, status: String },
    /// An install command ran, but the tool is still not found.
    StillMissing(&'static str),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Missing(names) => write!(f, "missing: {}; run `cargo xtask setup` to install them", names.join(", ")),
            SetupError::NoApt(pkgs) => write!(
                f,
                "this is not a Debian-like system (no apt-get): install the equivalents of the \
                 Debian packages `{}` with your package manager, then run this again",
                pkgs.join(" ")
            ),
            SetupError::NotRoot(pkgs) => write!(
                f,
                "installing packages needs root and there is no sudo: run \
                 `apt-get install {}` as root, then run this again",
                pkgs.join(" ")
            ),
            SetupError::InstallFailed { command, status } => {
                write!(f, "`{command}` failed ({status})")
            }
            SetupError::StillMissing(name) => {
                write!(f, "{name} is still not found after installing it; is it on PATH?")
            }
        }
    }
}

fn main() {
    let mut args = env::args_os().skip(1);
    let command = args.next().map(|a| a.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let result = match command.as_deref() {
        Some("setup") => setup_command(&rest),
        Some("demo") => setup(Purpose::Demo, false).map(|()| {
            cargo(&["run", "--bin", "gridproof", "--"], &rest);
        }),
        Some("test") => setup(Purpose::Test, false).map(|()| {
            cargo(&["nextest", "run", "--workspace", "--no-fail-fast"], &rest);
        }),
        Some("help" | "-h" | "--help") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}`\n\n{HELP}");
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

fn setup_command(args: &[OsString]) -> Result<(), SetupError> {
    let mut check_only = false;
    let mut purpose = Purpose::Test;
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = it.next() {
        match arg.as_ref() {
            "--check" => check_only = true,
            "--for" => match it.next().as_deref() {
                Some("demo") => purpose = Purpose::Demo,
                Some("test") => purpose = Purpose::Test,
                other => {
                    eprintln!("xtask setup: --for takes `demo` or `test`, not {other:?}");
                    exit(2);
                }
            },
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => {
                eprintln!("xtask setup: unknown argument `{other}`\n\n{HELP}");
                exit(2);
            }
        }
    }
    setup(purpose, check_only)
}

/// Makes sure every requirement for `purpose` is present, installing the missing ones unless
/// `check_only`. Prints one line per requirement it had to act on.
fn setup(purpose: Purpose, check_only: bool) -> Result<(), SetupError> {
    let wanted = REQUIREMENTS.iter().filter(|r| r.needed_for == Purpose::Demo || purpose == Purpose::Test);
    let missing: Vec<&Requirement> = wanted.filter(|r| !(r.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for r in &missing {
        eprintln!("xtask: {} is missing ({}); {}", r.name, r.why, r.source);
    }
    if check_only {
        return Err(SetupError::Missing(missing.iter().map(|r| r.name.to_string()).collect()));
    }

    // Debian packages first, in one apt-get run: npm itself is one of them when snarkjs is missing.
    let mut apt: Vec<&'static str> = Vec::new();
    for r in &missing {
        match r.source {
            Source::Apt(pkgs) => apt.extend_from_slice(pkgs),
            Source::Npm(_) if on_path("npm").is_none() => apt.extend_from_slice(&["nodejs", "npm"]),
            _ => {}
        }
    }
    apt.sort_unstable();
    apt.dedup();
    if !apt.is_empty() && on_path("apt-get").is_none() {
        // Not Debian-like: the build may still find what it needs (Xcode's libclang, say).
        eprintln!("xtask: warning: {}; going on without them", SetupError::NoApt(apt.clone()));
        return Ok(());
    }
    if !apt.is_empty() {
        apt_install(&apt)?;
        if apt.contains(&"mosquitto") {
            // Debian starts the broker as a service on install; the tests run their own.
            if on_path("service").is_some() {
                let _ = as_root("service").args(["mosquitto", "stop"]).output();
            }
        }
    }
    for r in &missing {
        match r.source {
            Source::Npm(pkg) => run(as_root("npm").args(["install", "-g", "--no-audit", "--no-fund", pkg]))?,
            Source::Cargo(krate) => run(Command::new(cargo_bin()).args(["install", "--locked", krate]))?,
            Source::Apt(_) => {}
        }
    }
    for r in &missing {
        if !(r.present)() {
            return Err(SetupError::StillMissing(r.name));
        }
    }
    eprintln!("xtask: installed {}", missing.iter().map(|r| r.name).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// Installs Debian packages as root, through sudo, or explains why it cannot.
fn apt_install(pkgs: &[&'static str]) -> Result<(), SetupError> {
    if on_path("apt-get").is_none() {
        return Err(SetupError::NoApt(pkgs.to_vec()));
    }
    if !is_root() && on_path("sudo").is_none() {
        return Err(SetupError::NotRoot(pkgs.to_vec()));
    }
    // No questions from debconf: as root through the environment, through sudo as an
    // assignment it passes on (sudo resets the environment).
    let apt_get = || {
        let mut cmd = if is_root() { Command::new("apt-get") } else { as_root("DEBIAN_FRONTEND=noninteractive") };
        if is_root() {
            cmd.env("DEBIAN_FRONTEND", "noninteractive");
        } else {
            cmd.arg("apt-get");
        }
        cmd
    };
    run(apt_get().args(["update", "-qq"]))?;
    run(apt_get().args(["install", "-y", "-qq", "--no-install-recommends"]).args(pkgs))
}

/// `program` run as root: directly when this process is root, else through sudo (`program`
/// may then also be an environment assignment sudo passes on, `VAR=value`).
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    }
}

/// Runs `cmd`, printing it first; a failure is an [`SetupError::InstallFailed`].
fn run(cmd: &mut Command) -> Result<(), SetupError> {
    let shown = shown(cmd);
    eprintln!("xtask: running {shown}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(SetupError::InstallFailed { command: shown, status: s.to_string() }),
        Err(e) => Err(SetupError::InstallFailed { command: shown, status: e.to_string() }),
    }
}

fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Runs cargo in the workspace root with `base` then `extra` arguments and exits with its status.
fn cargo(base: &[&str], extra: &[OsString]) -> ! {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace");
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(root).args(base).args(extra);
    // `cargo run` gave this process xtask's package variables; build scripts that watch them
    // (ring's watch CARGO_MANIFEST_DIR and CARGO_PKG_NAME) would otherwise rebuild whenever
    // one switches between `cargo xtask …` and plain cargo.
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"].contains(&k.as_ref())
        {
            cmd.env_remove(&key);
        }
    }
    eprintln!("xtask: running {}", shown(&cmd));
    match cmd.status() {
        Ok(s) => exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: could not run cargo: {e}");
            exit(1);
        }
    }
}

/// The cargo that runs this xtask (set by cargo for `cargo run`), else `cargo` on PATH.
fn cargo_bin() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The first `name` on PATH that is a file.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether this process runs as uid 0 (read from /proc, without libc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0")))
        .unwrap_or(false)
}

/// Whether bindgen will find libclang: in LIBCLANG_PATH, or where Debian and others put it.
fn libclang_present() -> bool {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("LIBCLANG_PATH") {
        dirs.push(PathBuf::from(p));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("llvm-") {
                dirs.push(e.path().join("lib"));
            }
        }
    }
    for d in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"] {
        dirs.push(PathBuf::from(d));
    }
    // bindgen also needs clang's own headers (stddef.h): the clang binary knows where they
    // are; else they sit in an LLVM directory.
    let headers = on_path("clang").is_some()
        || dirs
            .iter()
            .filter(|d| d.starts_with("/usr/lib/llvm-"))
            .any(|d| std::fs::read_dir(d.join("clang")).is_ok_and(|versions| versions.flatten().any(|v| v.path().join("include/stddef.h").is_file())));
    libclang_in(&dirs) && headers
}

/// Whether one of `dirs` holds libclang's shared library (`libclang.so`, `libclang-14.so.1`…;
/// not `libclang-cpp`, which bindgen cannot load).
fn libclang_in(dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("libclang") && n.contains(".so") && !n.starts_with("libclang-cpp")
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libclang_is_found_by_its_shared_library_and_not_by_libclang_cpp() {
        let dir = env::temp_dir().join(format!("xtask-libclang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libclang-cpp.so.14"), b"").unwrap();
        assert!(!libclang_in(&[dir.clone()]), "libclang-cpp alone does not do for bindgen");
        std::fs::write(dir.join("libclang-14.so.1"), b"").unwrap();
        assert!(libclang_in(&[dir.clone()]));
        assert!(!libclang_in(&[dir.join("absent")]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_demo_needs_only_the_build_tools_and_the_tests_need_all() {
        let demo: Vec<&str> = REQUIREMENTS.iter().filter(|r| r.needed_for == Purpose::Demo).map(|r| r.name).collect();
        assert_eq!(demo, ["libclang", "a C++ compiler"]);
        assert!(REQUIREMENTS.iter().any(|r| r.name == "mosquitto" && r.needed_for == Purpose::Test));
    }
}
