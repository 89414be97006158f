//! Compiles `proto/` with the pure-Rust `protox` compiler, so no system `protoc` is needed.

use prost::Message;
use std::{env, fs, path::PathBuf};

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
}
