//! What some integration tests need beyond a Rust toolchain, and how to
//! tell whether this machine has it. Shared, through `#[path]`, by
//! `build.rs` (which marks the tests needing something missing as
//! `#[ignore]`, except under `CI=true`) and by the tests themselves (which
//! check again when they run and fail naming what is missing). Standard
//! library only: build scripts have no dev-dependencies.

#![allow(dead_code)] // build.rs and each test file use part of this

use std::process::{Command, Stdio};

/// Something a test needs that a plain `cargo test` machine may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Mounting a tmpfs: root with `CAP_SYS_ADMIN`, and `mount(8)`.
    TmpfsMount,
    /// Running a command as another user with `setpriv` (util-linux): root
    /// with `CAP_SETUID` and `CAP_SETGID`.
    Setpriv,
    /// Tracing the daemon's system calls with `strace` (ptrace allowed).
    Strace,
    /// `promtool` (Debian's `prometheus` package).
    Promtool,
    /// A Prometheus server (Debian's `prometheus` package).
    Prometheus,
    /// `curl`.
    Curl,
    /// `python3` with the `svix` and `standardwebhooks` packages
    /// (`tests/clients/install.sh`).
    PythonClients,
    /// `openapi-spec-validator` (`tests/openapi/install.sh`).
    OpenApiValidator,
    /// The system's root certificates (Debian's `ca-certificates`).
    SystemRoots,
    /// `script` (util-linux; Debian's `bsdutils`), to run a command on a
    /// pseudo-terminal.
    Script,
}

impl Need {
    pub const ALL: [Need; 10] = [
        Need::TmpfsMount,
        Need::Setpriv,
        Need::Strace,
        Need::Promtool,
        Need::Prometheus,
        Need::Curl,
        Need::PythonClients,
        Need::OpenApiValidator,
        Need::SystemRoots,
        Need::Script,
    ];

    /// The `cfg` that build.rs sets when this is missing.
    pub fn cfg(self) -> &'static str {
        match self {
            Need::TmpfsMount => "webhookd_no_tmpfs",
            Need::Setpriv => "webhookd_no_setpriv",
            Need::Strace => "webhookd_no_strace",
            Need::Promtool => "webhookd_no_promtool",
            Need::Prometheus => "webhookd_no_prometheus",
            Need::Curl => "webhookd_no_curl",
            Need::PythonClients => "webhookd_no_python_clients",
            Need::OpenApiValidator => "webhookd_no_openapi_validator",
            Need::SystemRoots => "webhookd_no_system_roots",
            Need::Script => "webhookd_no_script",
        }
    }

    /// `Ok` if this machine has it, else what is missing and how to get it.
    pub fn check(self) -> Result<(), String> {
        match self {
            Need::TmpfsMount => {
                if !is_root() || !has_capability(CAP_SYS_ADMIN) {
                    return Err("mounting a tmpfs needs root with CAP_SYS_ADMIN".to_owned());
                }
                if !runs(Command::new("mount").arg("--version")) {
                    return Err(
                        "mounting a tmpfs needs mount(8) (apt-get install mount)".to_owned()
                    );
                }
                Ok(())
            }
            Need::Setpriv => {
                if !is_root() || !has_capability(CAP_SETUID) || !has_capability(CAP_SETGID) {
                    return Err(
                        "running webhookd as another user needs root with CAP_SETUID and CAP_SETGID"
                            .to_owned(),
                    );
                }
                if !runs(Command::new("setpriv").args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "true",
                ])) {
                    return Err(
                        "running webhookd as another user needs setpriv (apt-get install util-linux)"
                            .to_owned(),
                    );
                }
                Ok(())
            }
            Need::Strace => {
                if runs(Command::new("strace").args(["-f", "-qq", "-o", "/dev/null", "true"])) {
                    Ok(())
                } else {
                    Err(
                        "tracing the daemon needs strace, allowed to ptrace here (apt-get install strace)"
                            .to_owned(),
                    )
                }
            }
            Need::Promtool => runs(Command::new("promtool").arg("--version"))
                .then_some(())
                .ok_or_else(|| "promtool is missing (apt-get install prometheus)".to_owned()),
            Need::Prometheus => runs(Command::new("prometheus").arg("--version"))
                .then_some(())
                .ok_or_else(|| "a Prometheus server is missing (apt-get install prometheus)".to_owned()),
            Need::Curl => runs(Command::new("curl").arg("--version"))
                .then_some(())
                .ok_or_else(|| "curl is missing (apt-get install curl)".to_owned()),
            Need::PythonClients => runs(Command::new("python3").args(["-c", "import svix, standardwebhooks"]))
                .then_some(())
                .ok_or_else(|| {
                    "python3 with the svix and standardwebhooks packages is missing (tests/clients/install.sh)"
                        .to_owned()
                }),
            Need::SystemRoots => std::path::Path::new(SYSTEM_ROOTS)
                .is_file()
                .then_some(())
                .ok_or_else(|| {
                    format!("the system's root certificates ({SYSTEM_ROOTS}) are missing (apt-get install ca-certificates)")
                }),
            Need::OpenApiValidator => openapi_validator().map(|_| ()).ok_or_else(|| {
                "openapi-spec-validator is missing (tests/openapi/install.sh)".to_owned()
            }),
            Need::Script => runs(Command::new("script").args(["-qec", "true", "/dev/null"]))
                .then_some(())
                .ok_or_else(|| {
                    "script, to run a command on a pseudo-terminal, is missing (apt-get install bsdutils)"
                        .to_owned()
                }),
        }
    }
}

/// The virtualenv `tests/openapi/install.sh` makes: `openapi-venv` in the
/// cargo target directory, found from the build script's `OUT_DIR`
/// (`<target>/<profile>/build/<package>/out`) or from a test binary's
/// path (`<target>/<profile>/deps/<test>`).
pub fn openapi_venv() -> Option<std::path::PathBuf> {
    let from_out_dir = std::env::var_os("OUT_DIR")
        .map(std::path::PathBuf::from)
        .and_then(|out| out.ancestors().nth(4).map(std::path::Path::to_path_buf));
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(std::path::Path::to_path_buf));
    from_out_dir
        .or(from_exe)
        .map(|target| target.join("openapi-venv"))
}

/// `openapi-spec-validator`: the one in [`openapi_venv`], else one on `PATH`.
pub fn openapi_validator() -> Option<std::path::PathBuf> {
    const VALIDATOR: &str = "openapi-spec-validator";
    openapi_venv()
        .map(|venv| venv.join("bin").join(VALIDATOR))
        .into_iter()
        .chain([std::path::PathBuf::from(VALIDATOR)])
        .find(|candidate| runs(Command::new(candidate).arg("--version")))
}

/// The bundle of root certificates Debian's `ca-certificates` installs.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where `pip` puts packages for the `python3` on the `PATH`, if there is one.
pub fn python_packages_dir() -> Option<String> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !dir.is_empty()).then_some(dir)
}

/// Whether the `CI` environment variable says this is a CI run, where no
/// test may be skipped.
pub fn in_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_ADMIN: u32 = 21;

/// A line of `/proc/self/status`, e.g. `Uid` or `CapEff`.
fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

fn is_root() -> bool {
    status_field("Uid").is_some_and(|uids| uids.split_whitespace().next() == Some("0"))
}

fn has_capability(bit: u32) -> bool {
    status_field("CapEff")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << bit) != 0)
}

/// Whether the command starts and exits 0 (its output discarded).
fn runs(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
