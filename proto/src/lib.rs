//! memo's wire protocol, generated from `proto/*.proto`.
//!
//! - [`kvs`]: the public `memo.kvs.KeyValueStore` API, wire-compatible with the
//!   original infinit/memo `memo_kvs.proto` (same message and field names and
//!   numbers), so memo's existing clients work unchanged.
//! - [`peer`]: the internal `memo.peer.Peer` node-to-node service, an envelope for
//!   engine messages that the engine encodes itself.
//! - [`admin`]: the `memo.admin.Admin` operations service (`memo status`), memo's own.
//!
//! Each module holds the prost messages plus tonic server and client code:
//! `kvs::key_value_store_server::KeyValueStoreServer`,
//! `kvs::key_value_store_client::KeyValueStoreClient`,
//! `peer::peer_server::PeerServer`, `peer::peer_client::PeerClient`,
//! `admin::admin_server::AdminServer` and `admin::admin_client::AdminClient`. The code
//! comes from madsim-tonic-build: a real tonic implementation normally, a
//! simulated one under `--cfg madsim` (where messages are passed as values and
//! never encoded; the prost encoding still exists and is still tested).

/// The public key-value API, package `memo.kvs`.
pub mod kvs {
    tonic::include_proto!("memo.kvs");
}

/// The node-to-node transport, package `memo.peer`.
pub mod peer {
    tonic::include_proto!("memo.peer");
}

/// The operations service, package `memo.admin`.
pub mod admin {
    tonic::include_proto!("memo.admin");
}

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in this
/// crate (with source info), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/memo_descriptor.bin"));
