#!/usr/bin/env python3
"""A memo client in Python: Insert, Fetch, Update, List and Delete over gRPC.

memo's public API is `memo.kvs.KeyValueStore`, defined in proto/proto/memo_kvs.proto
(wire-compatible with the original memo). This script generates the Python stubs from
that file with grpcio-tools at run time (nothing generated is committed), then does a
round trip against one node:

    python memo_client.py --endpoint 127.0.0.1:7001

It exits 0 and prints `round trip OK` when every step behaved as documented.
"""

import argparse
import importlib
import os
import sys
import tempfile

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.join(HERE, "..", "..", "proto", "proto")
PROTO_FILE = "memo_kvs.proto"
# Bound on every call and on connecting, in seconds.
TIMEOUT = 10


def load_stubs(proto_dir, stubs_dir):
    """Imports memo_kvs_pb2 and memo_kvs_pb2_grpc from stubs_dir, generating them
    there first from proto_dir/memo_kvs.proto if they are not there yet."""
    if not os.path.exists(os.path.join(stubs_dir, "memo_kvs_pb2_grpc.py")):
        from grpc_tools import protoc

        os.makedirs(stubs_dir, exist_ok=True)
        status = protoc.main(
            [
                "grpc_tools.protoc",
                "-I" + proto_dir,
                "--python_out=" + stubs_dir,
                "--grpc_python_out=" + stubs_dir,
                os.path.join(proto_dir, PROTO_FILE),
            ]
        )
        if status != 0:
            sys.exit(f"error: protoc failed on {os.path.join(proto_dir, PROTO_FILE)}")
    sys.path.insert(0, stubs_dir)
    return importlib.import_module("memo_kvs_pb2"), importlib.import_module("memo_kvs_pb2_grpc")


def expect_code(call, code):
    """Runs call(), which must fail with the gRPC status `code`; returns its name."""
    try:
        call()
    except grpc.RpcError as error:
        if error.code() != code:
            raise
        return error.code().name
    sys.exit(f"error: expected {code.name}, but the call succeeded")


def round_trip(kvs, stub, prefix):
    key = prefix + "greeting"
    other = prefix + "other"

    stub.Insert(kvs.InsertRequest(key=key, value=b"hello"), timeout=TIMEOUT)
    print(f"insert {key} = hello")
    value = stub.Fetch(kvs.FetchRequest(key=key), timeout=TIMEOUT).value
    print(f"fetch {key} -> {value.decode()}")

    stub.Update(kvs.UpdateRequest(key=key, value=b"bonjour"), timeout=TIMEOUT)
    print(f"update {key} = bonjour")
    value = stub.Fetch(kvs.FetchRequest(key=key), timeout=TIMEOUT).value
    print(f"fetch {key} -> {value.decode()}")

    again = lambda: stub.Insert(kvs.InsertRequest(key=key, value=b"again"), timeout=TIMEOUT)  # noqa: E731
    print(f"insert {key} again -> {expect_code(again, grpc.StatusCode.ALREADY_EXISTS)}")

    stub.Upsert(kvs.UpsertRequest(key=other, value=b"42"), timeout=TIMEOUT)
    print(f"upsert {other} = 42")
    page = stub.List(kvs.ListRequest(prefix=prefix, maxKeys=100), timeout=TIMEOUT)
    print(f"list {prefix} -> {', '.join(item.key for item in page.items)}")

    stub.Delete(kvs.DeleteRequest(key=key), timeout=TIMEOUT)
    print(f"delete {key}")
    missing = lambda: stub.Fetch(kvs.FetchRequest(key=key), timeout=TIMEOUT)  # noqa: E731
    print(f"fetch {key} -> {expect_code(missing, grpc.StatusCode.NOT_FOUND)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:7001", help="a memo node, HOST:PORT")
    parser.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR, help="directory of memo_kvs.proto")
    parser.add_argument(
        "--stubs-dir", help="where the generated stubs are (or go); default: a temporary directory"
    )
    parser.add_argument("--prefix", default="python/", help="prefix of the keys this example writes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        kvs, kvs_grpc = load_stubs(args.proto_dir, args.stubs_dir or scratch)
        with grpc.insecure_channel(args.endpoint) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            except grpc.FutureTimeoutError:
                sys.exit(f"error: cannot connect to {args.endpoint}")
            round_trip(kvs, kvs_grpc.KeyValueStoreStub(channel), args.prefix)
    print("round trip OK")


if __name__ == "__main__":
    main()
