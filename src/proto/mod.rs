//! The gRPC types generated from `proto/vodsigner/v1/signer.proto`, and their protobuf codec
//! ([`codec`]).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;

tonic::include_proto!("vodsigner.v1");

/// The encoded descriptor set of the proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vodsigner_descriptor");
