//! Compiles `proto/*.proto` without a system `protoc`: protox parses them into a
//! file descriptor set, written to `OUT_DIR/memo_descriptor.bin` (also exported as
//! `FILE_DESCRIPTOR_SET` for gRPC reflection); madsim-tonic-build then generates
//! both the real (`OUT_DIR/<pkg>.rs`) and the simulated (`OUT_DIR/sim/<pkg>.rs`)
//! code from that set instead of running protoc.

use std::{env, fs, path::PathBuf};

const PROTO_DIR: &str = "proto";
const PROTOS: [&str; 3] = ["proto/memo_kvs.proto", "proto/memo_peer.proto", "proto/memo_admin.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("memo_descriptor.bin");

    let mut compiler = protox::Compiler::new([PROTO_DIR])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    fs::write(&descriptor_path, compiler.encode_file_descriptor_set())?;

    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .emit_rerun_if_changed(false)
        .compile_protos(&PROTOS, &[PROTO_DIR])?;
    Ok(())
}
