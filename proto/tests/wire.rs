//! Wire-format tests: the `memo.kvs` schema must not drift from memo's, and the
//! encodings must stay byte-for-byte what memo's clients send and expect.
//!
//! These run in both modes: under `--cfg madsim` the tonic transport is simulated,
//! but the prost messages and their encoding are the same.

use memo_proto::FILE_DESCRIPTOR_SET;
use memo_proto::kvs::{
    DeleteRequest, DeleteResponse, FetchRequest, FetchResponse, InsertRequest, InsertResponse, ListItem, ListRequest,
    ListResponse, UpdateRequest, UpdateResponse, UpsertRequest, UpsertResponse,
};
use memo_proto::peer::{Ack, Batch};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{FileDescriptorProto, FileDescriptorSet};

/// The `memo.kvs` contract, as rendered by [`render_package`]. It matches the
/// original infinit/memo `memo_kvs.proto`; changing anything here breaks memo's
/// clients. Adding a field (with a new number) means adding a line here. memo's
/// additions so far (none of which an existing client sends or must read):
/// `FetchRequest.version` (0 by default: the current value, byte for byte the
/// request memo's clients send) and the `ListVersions` RPC with its three messages.
const EXPECTED_KVS: &str = "\
file memo_kvs.proto syntax proto3 package memo.kvs
service KeyValueStore: rpc Delete(DeleteRequest) returns (DeleteResponse)
service KeyValueStore: rpc Fetch(FetchRequest) returns (FetchResponse)
service KeyValueStore: rpc Insert(InsertRequest) returns (InsertResponse)
service KeyValueStore: rpc List(ListRequest) returns (ListResponse)
service KeyValueStore: rpc ListVersions(ListVersionsRequest) returns (ListVersionsResponse)
service KeyValueStore: rpc Update(UpdateRequest) returns (UpdateResponse)
service KeyValueStore: rpc Upsert(UpsertRequest) returns (UpsertResponse)
message DeleteRequest
DeleteRequest.key = 1 string optional
message DeleteResponse
message FetchRequest
FetchRequest.key = 1 string optional
FetchRequest.version = 2 uint64 optional
message FetchResponse
FetchResponse.value = 1 bytes optional
message InsertRequest
InsertRequest.key = 1 string optional
InsertRequest.value = 2 bytes optional
message InsertResponse
message ListItem
ListItem.key = 1 string optional
message ListRequest
ListRequest.prefix = 1 string optional
ListRequest.marker = 2 string optional
ListRequest.delimiter = 3 string optional
ListRequest.maxKeys = 4 uint64 optional
message ListResponse
ListResponse.items = 1 .memo.kvs.ListItem repeated
ListResponse.prefixes = 2 string repeated
ListResponse.truncated = 3 bool optional
message ListVersionsRequest
ListVersionsRequest.key = 1 string optional
message ListVersionsResponse
ListVersionsResponse.versions = 1 .memo.kvs.VersionInfo repeated
message UpdateRequest
UpdateRequest.key = 1 string optional
UpdateRequest.value = 2 bytes optional
message UpdateResponse
message UpsertRequest
UpsertRequest.key = 1 string optional
UpsertRequest.value = 2 bytes optional
message UpsertResponse
message VersionInfo
VersionInfo.number = 1 uint64 optional
VersionInfo.size = 2 uint64 optional
VersionInfo.deleted = 3 bool optional
VersionInfo.timeMs = 4 uint64 optional
";

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

/// Strips the `TYPE_`/`LABEL_` prefix of a descriptor enum name and lowercases it.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

/// Renders every file of `package` as a canonical listing: messages, fields and
/// methods sorted (declaration order does not matter on the wire), one line per
/// field: `Message.field = number type label`, plus anything unusual (oneofs,
/// proto3 `optional`, streaming, nested types, enums, options).
fn render_package(set: &FileDescriptorSet, package: &str) -> String {
    let mut files: Vec<&FileDescriptorProto> = set.file.iter().filter(|f| f.package() == package).collect();
    files.sort_by_key(|f| f.name());
    let mut out = String::new();
    for file in files {
        out += &format!("file {} syntax {} package {}\n", file.name(), file.syntax(), file.package());
        if !file.enum_type.is_empty() || !file.extension.is_empty() || !file.dependency.is_empty() {
            out += "file has enums, extensions or imports\n";
        }
        let mut services: Vec<_> = file.service.iter().collect();
        services.sort_by_key(|s| s.name());
        for service in services {
            let mut methods: Vec<_> = service.method.iter().collect();
            methods.sort_by_key(|m| m.name());
            for m in methods {
                let local = |t: &str| t.strip_prefix(&format!(".{package}.")).unwrap_or(t).to_owned();
                out += &format!(
                    "service {}: rpc {}({}{}) returns ({}{})\n",
                    service.name(),
                    m.name(),
                    if m.client_streaming() { "stream " } else { "" },
                    local(m.input_type()),
                    if m.server_streaming() { "stream " } else { "" },
                    local(m.output_type()),
                );
            }
        }
        let mut messages: Vec<_> = file.message_type.iter().collect();
        messages.sort_by_key(|m| m.name());
        for msg in messages {
            out += &format!("message {}\n", msg.name());
            if !msg.nested_type.is_empty()
                || !msg.enum_type.is_empty()
                || !msg.oneof_decl.is_empty()
                || msg.options.is_some()
            {
                out += &format!("{} has nested types, enums, oneofs or options\n", msg.name());
            }
            let mut fields: Vec<_> = msg.field.iter().collect();
            fields.sort_by_key(|f| f.number());
            for f in fields {
                let ty = match f.r#type() {
                    Type::Message | Type::Enum => f.type_name().to_owned(),
                    t => short(t.as_str_name(), "TYPE_"),
                };
                let label: Label = f.label();
                out += &format!(
                    "{}.{} = {} {} {}{}{}\n",
                    msg.name(),
                    f.name(),
                    f.number(),
                    ty,
                    short(label.as_str_name(), "LABEL_"),
                    if f.proto3_optional() { " proto3_optional" } else { "" },
                    if f.oneof_index.is_some() || f.options.is_some() { " (oneof or options)" } else { "" },
                );
            }
        }
    }
    out
}

#[test]
fn kvs_schema_matches_memo() {
    let rendered = render_package(&descriptor_set(), "memo.kvs");
    if rendered != EXPECTED_KVS {
        let missing: Vec<_> = EXPECTED_KVS.lines().filter(|l| !rendered.lines().any(|r| r == *l)).collect();
        let unexpected: Vec<_> = rendered.lines().filter(|l| !EXPECTED_KVS.lines().any(|e| e == *l)).collect();
        panic!(
            "memo.kvs drifted from memo's memo_kvs.proto\n\
             missing: {missing:#?}\nunexpected: {unexpected:#?}\n--- rendered ---\n{rendered}"
        );
    }
}

#[test]
fn descriptor_set_has_every_file_with_source_info() {
    let set = descriptor_set();
    let mut names: Vec<_> = set.file.iter().map(|f| f.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["memo_admin.proto", "memo_kvs.proto", "memo_peer.proto"]);
    for file in &set.file {
        assert!(file.source_code_info.is_some(), "{} lacks source info", file.name());
    }
}

#[test]
fn peer_schema() {
    let set = descriptor_set();
    let file = set.file.iter().find(|f| f.package() == "memo.peer").expect("memo.peer file");
    let service = &file.service[0];
    assert_eq!(service.name(), "Peer");
    let methods: Vec<_> = service
        .method
        .iter()
        .map(|m| (m.name(), m.client_streaming(), m.server_streaming(), m.input_type(), m.output_type()))
        .collect();
    assert_eq!(
        methods,
        [
            ("Stream", true, true, ".memo.peer.Batch", ".memo.peer.Ack"),
            ("Send", false, false, ".memo.peer.Batch", ".memo.peer.Ack"),
        ]
    );
}

#[test]
fn admin_schema() {
    let set = descriptor_set();
    let file = set.file.iter().find(|f| f.package() == "memo.admin").expect("memo.admin file");
    let service = &file.service[0];
    assert_eq!(service.name(), "Admin");
    let methods: Vec<_> = service.method.iter().map(|m| (m.name(), m.input_type(), m.output_type())).collect();
    assert_eq!(
        methods,
        [
            ("Status", ".memo.admin.StatusRequest", ".memo.admin.StatusResponse"),
            ("Members", ".memo.admin.MembersRequest", ".memo.admin.MembersResponse"),
            ("Leave", ".memo.admin.LeaveRequest", ".memo.admin.LeaveResponse"),
            ("Remove", ".memo.admin.RemoveRequest", ".memo.admin.RemoveResponse"),
            ("PolicyList", ".memo.admin.PolicyListRequest", ".memo.admin.PolicyListResponse"),
            ("PolicySet", ".memo.admin.PolicySetRequest", ".memo.admin.PolicyChangeResponse"),
            ("PolicyDelete", ".memo.admin.PolicyDeleteRequest", ".memo.admin.PolicyChangeResponse"),
            ("PolicyInstall", ".memo.admin.PolicyInstallRequest", ".memo.admin.PolicyInstallResponse"),
        ]
    );
}

/// Encodes `msg`, checks the bytes, and decodes them back to `msg`.
fn golden<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, bytes: &[u8]) {
    assert_eq!(msg.encode_to_vec(), bytes, "encoding of {msg:?}");
    assert_eq!(&M::decode(bytes).expect("decodes"), msg);
}

#[test]
fn golden_put_requests() {
    let bytes = [0x0a, 0x01, b'k', 0x12, 0x01, b'v'];
    golden(&InsertRequest { key: "k".into(), value: b"v".to_vec() }, &bytes);
    golden(&UpdateRequest { key: "k".into(), value: b"v".to_vec() }, &bytes);
    golden(&UpsertRequest { key: "k".into(), value: b"v".to_vec() }, &bytes);
    // proto3 leaves default values off the wire: an empty value is just the key.
    golden(&InsertRequest { key: "k".into(), value: Vec::new() }, &[0x0a, 0x01, b'k']);
    // A 200-byte value has a two-byte length prefix (200 = 0xc8 0x01).
    let value = vec![7u8; 200];
    let mut expected = vec![0x0a, 0x02, b'k', b'2', 0x12, 0xc8, 0x01];
    expected.extend_from_slice(&value);
    golden(&UpsertRequest { key: "k2".into(), value }, &expected);
}

#[test]
fn golden_key_requests_and_responses() {
    golden(&FetchRequest { key: "k".into(), version: 0 }, &[0x0a, 0x01, b'k']);
    golden(&FetchRequest { key: "k".into(), version: 7 }, &[0x0a, 0x01, b'k', 0x10, 0x07]);
    golden(&DeleteRequest { key: "k".into() }, &[0x0a, 0x01, b'k']);
    golden(&FetchResponse { value: b"xyz".to_vec() }, &[0x0a, 0x03, b'x', b'y', b'z']);
    golden(&InsertResponse {}, &[]);
    golden(&UpdateResponse {}, &[]);
    golden(&UpsertResponse {}, &[]);
    golden(&DeleteResponse {}, &[]);
    golden(&FetchResponse::default(), &[]);
    // Non-ASCII keys travel as UTF-8.
    golden(&FetchRequest { key: "é".into(), version: 0 }, &[0x0a, 0x02, 0xc3, 0xa9]);
}

#[test]
fn golden_list_request() {
    golden(
        &ListRequest { prefix: "a/".into(), marker: "a/b".into(), delimiter: "/".into(), max_keys: 5 },
        &[
            0x0a, 0x02, b'a', b'/', // prefix = 1
            0x12, 0x03, b'a', b'/', b'b', // marker = 2
            0x1a, 0x01, b'/', // delimiter = 3
            0x20, 0x05, // maxKeys = 4, varint
        ],
    );
    // maxKeys is a varint: 1000 takes two bytes.
    golden(&ListRequest { max_keys: 1000, ..Default::default() }, &[0x20, 0xe8, 0x07]);
    // An all-default request (list everything, default page) is empty.
    golden(&ListRequest::default(), &[]);
}

#[test]
fn golden_list_response() {
    golden(
        &ListResponse {
            items: vec![ListItem { key: "a".into() }, ListItem { key: "b".into() }],
            prefixes: vec!["c/".into()],
            truncated: true,
        },
        &[
            0x0a, 0x03, 0x0a, 0x01, b'a', // items = 1: ListItem { key = 1 }
            0x0a, 0x03, 0x0a, 0x01, b'b', // items = 1
            0x12, 0x02, b'c', b'/', // prefixes = 2
            0x18, 0x01, // truncated = 3
        ],
    );
    golden(&ListResponse::default(), &[]);
    // An item with an empty key is still an item: an empty embedded message.
    golden(&ListResponse { items: vec![ListItem::default()], ..Default::default() }, &[0x0a, 0x00]);
}

#[test]
fn unknown_fields_are_skipped() {
    // A newer client may send fields this server does not know; they are ignored.
    let bytes = [
        0x0a, 0x01, b'k', // key = 1
        0x78, 0x2a, // field 15, varint 42
        0x12, 0x01, b'v', // value = 2
        0x82, 0x01, 0x02, b'h', b'i', // field 16, length-delimited "hi"
    ];
    let decoded = InsertRequest::decode(&bytes[..]).expect("decodes");
    assert_eq!(decoded, InsertRequest { key: "k".into(), value: b"v".to_vec() });
}

#[test]
fn non_utf8_key_is_rejected() {
    // `string` fields must be UTF-8; prost refuses anything else.
    assert!(FetchRequest::decode(&[0x0a, 0x01, 0xff][..]).is_err());
}

#[test]
fn peer_batch_round_trip() {
    let batch = Batch {
        cluster_id: vec![0xde, 0xad],
        from_name: "n1".into(),
        from_generation: 3,
        sequence: 300,
        // Engine messages are opaque bytes; an empty one must survive too.
        messages: vec![vec![1, 2, 3], Vec::new(), vec![0xff; 130]],
        // A node without keys sends none: the batch's bytes are what they were.
        keys: Vec::new(),
    };
    let mut expected = vec![
        0x0a, 0x02, 0xde, 0xad, // cluster_id = 1
        0x12, 0x02, b'n', b'1', // from_name = 2
        0x18, 0x03, // from_generation = 3
        0x20, 0xac, 0x02, // sequence = 4 (300)
        0x2a, 0x03, 1, 2, 3, // messages = 5
        0x2a, 0x00, // messages = 5, empty
        0x2a, 0x82, 0x01, // messages = 5, 130 bytes
    ];
    expected.extend_from_slice(&[0xff; 130]);
    golden(&batch, &expected);
    assert_eq!(Batch::decode(&batch.encode_to_vec()[..]).unwrap(), batch);

    golden(&Ack { sequence: 300 }, &[0x08, 0xac, 0x02]);
    golden(&Ack::default(), &[]);
}
