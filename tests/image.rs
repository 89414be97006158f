//! The container image's recipe (`Dockerfile`, `.dockerignore`), checked as text: what CI's
//! offline build and a user's plain `docker build` both rely on. Building and running the
//! image needs podman and root, so that lives in `.ci/image.sh`, not in `cargo test`.

use std::path::PathBuf;

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in repo_file("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if !current.trim().is_empty() {
                    out.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    out
}

fn arg_default(instructions: &[String], name: &str) -> Option<String> {
    instructions.iter().find_map(|i| {
        i.strip_prefix("ARG ")
            .and_then(|rest| rest.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_owned)
    })
}

#[test]
fn both_bases_are_build_arguments_with_the_public_images_as_defaults() {
    let all = instructions();
    let first_from = all
        .iter()
        .position(|i| i.starts_with("FROM "))
        .expect("a FROM");
    let before: Vec<&String> = all[..first_from].iter().collect();
    for (name, default) in [
        ("BUILDER_IMAGE", "rust:1-bookworm"),
        ("RUNTIME_IMAGE", "gcr.io/distroless/cc-debian12:nonroot"),
    ] {
        assert!(
            before.contains(&&format!("ARG {name}={default}")),
            "ARG {name}={default} must come before the first FROM (a FROM can only use ARGs \
             declared there): {before:?}"
        );
    }
    let froms: Vec<&String> = all.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(
        froms,
        ["FROM ${BUILDER_IMAGE} AS builder", "FROM ${RUNTIME_IMAGE}"],
        "two stages, each on its build argument"
    );
}

#[test]
fn the_runtime_stage_runs_as_the_nonroot_user_with_the_oci_labels() {
    let all = instructions();
    let runtime = &all[all
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM")..];
    assert!(
        runtime.contains(&"USER 65532:65532".to_owned()),
        "{runtime:?}"
    );
    assert!(runtime.contains(&r#"ENTRYPOINT ["/vod-signer"]"#.to_owned()));
    let labels = runtime
        .iter()
        .find(|i| i.starts_with("LABEL "))
        .expect("LABEL");
    for (label, arg) in [
        ("version", "VERSION"),
        ("revision", "REVISION"),
        ("source", "SOURCE"),
    ] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{label}=\"${{{arg}}}\"")),
            "label {label} from ARG {arg}: {labels}"
        );
        assert!(
            runtime.iter().any(|i| i.starts_with(&format!("ARG {arg}"))),
            "ARG {arg} declared in the runtime stage"
        );
    }
    // The version label's default is Cargo.toml's version (CI passes it too).
    assert_eq!(
        arg_default(runtime, "VERSION").as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "ARG VERSION default = Cargo.toml's version"
    );
    let chart = repo_file("helm/vod-signer/Chart.yaml");
    assert!(
        chart.contains(&format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"))),
        "the chart's appVersion (the default image tag) is Cargo.toml's version"
    );
}

#[test]
fn the_build_is_locked_offline_capable_and_carries_the_revision() {
    let all = instructions();
    let builds: Vec<&String> = all
        .iter()
        .filter(|i| i.starts_with("RUN ") && i.contains("cargo build"))
        .collect();
    assert_eq!(
        builds.len(),
        2,
        "the dependency stage and the crate: {builds:?}"
    );
    for build in &builds {
        assert!(
            build.contains("cargo build --release --locked --bin vod-signer"),
            "{build}"
        );
    }
    assert!(
        builds[1].contains(r#"VOD_SIGNER_REVISION="${REVISION}""#),
        "the revision reaches build.rs: {}",
        builds[1]
    );
    // CARGO_NET_OFFLINE is an ARG of the builder stage (false unless CI says true): an ARG is
    // in the environment of every RUN after it.
    let builder_from = all.iter().position(|i| i.contains("AS builder")).unwrap();
    let offline = all
        .iter()
        .position(|i| i == "ARG CARGO_NET_OFFLINE=false")
        .expect("ARG CARGO_NET_OFFLINE=false in the builder stage");
    let first_build = all.iter().position(|i| i == builds[0]).unwrap();
    assert!(builder_from < offline && offline < first_build);
    // The revision is declared after the dependency layer, so a new commit does not rebuild it.
    let revision = all
        .iter()
        .position(|i| i.starts_with("ARG REVISION"))
        .unwrap();
    assert!(
        first_build < revision,
        "ARG REVISION only after the dependency build"
    );
}

#[test]
fn the_dependency_stub_has_every_target_cargo_toml_declares() {
    // `cargo build` parses the whole manifest: every explicitly declared bench, example or
    // test must exist in the stub stage, or the dependency layer fails to build.
    let manifest: toml::Table = repo_file("Cargo.toml").parse().expect("Cargo.toml");
    let all = instructions();
    let stub = all
        .iter()
        .find(|i| i.starts_with("RUN ") && i.contains("cargo build"))
        .unwrap();
    for (section, dir) in [
        ("bench", "benches"),
        ("example", "examples"),
        ("test", "tests"),
    ] {
        for target in manifest
            .get(section)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let name = target["name"].as_str().unwrap();
            let path = target
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{dir}/{name}.rs"));
            assert!(
                stub.contains(&format!("> {path}")),
                "the stub stage must create {path} ([[{section}]] {name}): {stub}"
            );
        }
    }
}

#[test]
fn the_build_context_holds_what_the_dockerfile_copies() {
    let ignore = repo_file(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        "an allow-list: everything out first"
    );
    let allowed: Vec<String> = rules[1..]
        .iter()
        .map(|r| {
            r.strip_prefix('!')
                .expect("only exceptions after *")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    let copied: Vec<String> = instructions()
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
        .flat_map(|i| {
            let words: Vec<&str> = i.split_whitespace().skip(1).collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut a = allowed.clone();
    let mut c = copied.clone();
    a.sort();
    c.sort();
    assert_eq!(
        a, c,
        ".dockerignore lets in exactly what the Dockerfile copies"
    );
}
