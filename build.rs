//! Marks the integration tests that need something this machine lacks
//! (root to mount a tmpfs, `setpriv`, `strace`, `promtool`, Prometheus,
//! `curl`, the Python webhook libraries, `openapi-spec-validator`,
//! `script`; see `tests/common/requirements.rs`) as ignored, by setting a
//! `cfg` per missing requirement that those tests turn into
//! `#[ignore = "reason"]`: `cargo test` then lists them as ignored instead
//! of passing them unseen. With `CI=true` nothing is ignored, so a missing
//! requirement fails its test, naming it.

#[path = "tests/common/requirements.rs"]
mod requirements;

use requirements::Need;

fn main() {
    for need in Need::ALL {
        println!("cargo::rustc-check-cfg=cfg({})", need.cfg());
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=tests/common/requirements.rs");
    println!("cargo::rerun-if-env-changed=CI");
    // Installing a tool adds to /usr/bin; pip installs the Python clients
    // into python3's package dir.
    println!("cargo::rerun-if-changed=/usr/bin");
    if let Some(dir) = requirements::python_packages_dir()
        && std::path::Path::new(&dir).is_dir()
    {
        println!("cargo::rerun-if-changed={dir}");
    }
    if let Some(venv) = requirements::openapi_venv()
        && venv.is_dir()
    {
        println!("cargo::rerun-if-changed={}", venv.display());
    }
    if requirements::in_ci(std::env::var("CI").ok().as_deref()) {
        return;
    }
    for need in Need::ALL {
        if let Err(missing) = need.check() {
            println!("cargo::rustc-cfg={}", need.cfg());
            println!("cargo::warning=tests that need this are ignored: {missing}");
        }
    }
}
