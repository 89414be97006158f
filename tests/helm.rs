//! The Helm chart (`helm/vod-signer`): runs `helm/tests/test_chart.py`, which lints it with
//! Helm v4, renders it with many value sets, validates the manifests against the Kubernetes
//! schemas (the ServiceMonitor and PrometheusRule CRDs, which those schemas do not know, field
//! by field; the PrometheusRule must be `files/alerts.rules.yaml` exactly and the Grafana
//! dashboard ConfigMap `files/dashboard.json`), checks the chart's promises and starts the
//! built binary with the rendered configuration. Everything is offline after the first run.
//! The alerts' promtool unit tests run from `.ci/alerts.sh`.
//!
//! The script runs in a Python virtual environment this test creates at `target/helm-venv`
//! (packages pinned in `helm/tests/requirements.txt`, from PyPI), so only `python3` is needed.
//! `cargo test --test helm -- --nocapture` shows each check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo().join(dir)
            }
        }
        None => repo().join("target"),
    }
}

fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

fn python3() -> &'static str {
    let recent = "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)";
    match Command::new("python3").args(["-c", recent]).output() {
        Ok(out) if out.status.success() => "python3",
        Ok(_) => panic!(
            "the Helm chart test needs python3 3.10 or later (helm-python-sdk), found an older \
             one: install a newer python3 with venv"
        ),
        Err(_) => panic!(
            "the Helm chart test needs python3 (3.10 or later) with venv: install it, e.g. \
             `apt-get install python3 python3-venv` on Debian or Ubuntu, `brew install python` on \
             macOS; it then creates target/helm-venv and installs helm/tests/requirements.txt \
             from PyPI by itself"
        ),
    }
}

/// The venv's python, creating the venv (or refreshing it when the pinned requirements changed).
fn venv(requirements: &Path) -> PathBuf {
    let venv = target_dir().join("helm-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(requirements).expect("helm/tests/requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return python;
    }
    let started = Instant::now();
    eprintln!("helm test: creating {} (first run only)", venv.display());
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("remove the stale venv");
    }
    let out = Command::new(python3())
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .expect("run python3 -m venv");
    if !out.status.success() {
        panic!(
            "python3 -m venv failed: {}\nOn Debian or Ubuntu install the venv module: \
             `apt-get install python3-venv`",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
        "pip install -r helm/tests/requirements.txt (PyPI must be reachable on the first run)",
    );
    std::fs::write(&stamp, wanted).expect("write the venv stamp");
    eprintln!(
        "helm test: venv ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    python
}

#[test]
fn helm_chart() {
    let tests = repo().join("helm").join("tests");
    let python = venv(&tests.join("requirements.txt"));
    let started = Instant::now();
    let output = Command::new(&python)
        .arg(tests.join("test_chart.py"))
        .env("VOD_SIGNER_BIN", env!("CARGO_BIN_EXE_vod-signer"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(repo())
        .output()
        .expect("run helm/tests/test_chart.py");
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    println!(
        "helm/tests/test_chart.py took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "helm/tests/test_chart.py failed ({}): see the FAIL lines above",
        output.status
    );
}
