//! Compiles `proto/` with the pure-Rust `protox` compiler, so no system `protoc` is needed,
//! and records the git revision the binary is built from (`vodsigner_build_info{revision}`).

use prost::Message;
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let proto = "proto/vodsigner/v1/signer.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"]).expect("compile proto with protox");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    // Reflection serves this descriptor set; `compile_fds` does not write it.
    fs::write(out.join("vodsigner_descriptor.bin"), fds.encode_to_vec())
        .expect("write descriptor set");
    tonic_prost_build::configure()
        // Typed INVALID_REQUEST for undecodable requests (see src/proto/codec.rs).
        .codec_path("crate::proto::codec::WireCodec")
        .compile_fds(fds)
        .expect("generate gRPC code");

    println!("cargo:rustc-env=VOD_SIGNER_REVISION={}", revision());
}

/// The git revision: `VOD_SIGNER_REVISION` when set (the image build, which has no `.git`),
/// else `git rev-parse HEAD` in a checkout, else "unknown".
fn revision() -> String {
    println!("cargo:rerun-if-env-changed=VOD_SIGNER_REVISION");
    if let Ok(given) = env::var("VOD_SIGNER_REVISION") {
        let given = given.trim();
        if !given.is_empty() {
            return given.to_owned();
        }
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Run again when HEAD moves: HEAD itself (a checkout), its reflog (every commit, reset or
    // checkout appends to it), and the branch's ref when it is a loose file. Only existing
    // files: cargo treats a missing one as always changed, which would rebuild every time.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    watched.push(git(&["rev-parse", "--git-path", "logs/HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    head
}
