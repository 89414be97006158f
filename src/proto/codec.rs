//! The protobuf codec of the gRPC service: prost's, except that a request that does not
//! decode (bad protobuf, invalid UTF-8 in a string field) is refused with a typed
//! `INVALID_REQUEST` instead of prost's untyped INTERNAL.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::refusal::Refusal;

/// prost encoding, typed decoding errors; named by `build.rs` as the generated code's codec.
#[derive(Debug, Clone)]
pub struct WireCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        WireCodec(PhantomData)
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TypedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        TypedDecoder(PhantomData)
    }
}

/// Decodes `U`, refusing undecodable input with `INVALID_REQUEST`.
#[derive(Debug, Clone)]
pub struct TypedDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for TypedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Refusal::invalid(format!("the request is not a valid protobuf message: {e}")).into()
        })
    }
}
