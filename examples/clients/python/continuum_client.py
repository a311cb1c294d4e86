#!/usr/bin/env python3
"""A small Continuum client in Python, generated from the repository's proto/.

It applies a megamodel with the function templates it names, follows Watch until
every changed subsystem has converged (or a component failed), and prints the
problems of a refused model with gRPC's standard status helpers.

    python continuum_client.py --server 127.0.0.1:7000 apply MODEL.json [--wait 60]

Exit codes: 0 applied (and converged with --wait), 1 refused or failed, 2 timed out.
"""

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent.parent / "proto" / "proto"
PROTO_FILE = "continuum/v1/continuum.proto"


def load_stubs():
    """Compiles the protocol with grpcio-tools into a private directory and imports it."""
    from grpc_tools import protoc
    import importlib.resources

    out = Path(tempfile.mkdtemp(prefix="continuum-py-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / PROTO_FILE),
    ])
    if code != 0:
        sys.exit(f"cannot compile {PROTO_ROOT / PROTO_FILE} (protoc exit {code})")
    sys.path.insert(0, str(out))
    from continuum.v1 import continuum_pb2, continuum_pb2_grpc
    return continuum_pb2, continuum_pb2_grpc


def runtimes(value):
    """Every function template path a model names (`runtime` of a function)."""
    if isinstance(value, dict):
        if value.get("kind") == "function" and isinstance(value.get("runtime"), str):
            yield value["runtime"]
        for v in value.values():
            yield from runtimes(v)
    elif isinstance(value, list):
        for v in value:
            yield from runtimes(v)


def apply_request(pb, path):
    text = Path(path).read_bytes()
    request = pb.ApplyRequest(
        megamodel=pb.Document(name=str(path), json=text),
        author=os.environ.get("USER", "python-client"),
        message="applied from the Python client",
    )
    try:
        model = json.loads(text)
    except ValueError:
        return request  # the orchestrator says what is wrong, with the line
    for runtime in sorted(set(runtimes(model))):
        template = Path(path).parent / runtime
        if template.is_file():
            request.templates[runtime].name = str(template)
            request.templates[runtime].json = template.read_bytes()
    return request


def print_refusal(error):
    """The problems of a refused model, read with grpcio-status's standard helper."""
    status = rpc_status.from_call(error)
    print(f"refused: {error.code().name}: {error.details()}", file=sys.stderr)
    if status is None:
        return
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                print(f"  {v.field}: {v.description}", file=sys.stderr)


def follow(pb, stub, revision, targets, wait):
    """Follows Watch from the start of the log until every changed subsystem has
    observed its new generation with nothing left to do, or a component failed."""
    pending = {t.subsystem: t.generation for t in targets}
    deadline = time.monotonic() + wait
    seen_revision = False
    stream = stub.Watch(pb.WatchRequest(after=0), timeout=wait)
    try:
        for event in stream:
            kind = event.WhichOneof("kind")
            if kind == "revision" and event.revision.number == revision:
                seen_revision = True
                print(f"event {event.seq}: revision {revision} stored")
            if not seen_revision:
                continue  # older history
            if kind == "target_sent":
                t = event.target_sent
                print(f"event {event.seq}: generation {t.generation} sent to {t.gateway_id}")
            elif kind == "component":
                s = event.component.status
                state = pb.ComponentState.Name(s.state).removeprefix("COMPONENT_STATE_").lower()
                print(f"event {event.seq}: {event.component.subsystem}/{s.component} {state} {s.reason}".rstrip())
                if s.state == pb.COMPONENT_STATE_FAILED and event.component.subsystem in pending:
                    print(f"failed: {s.component}: {s.reason}", file=sys.stderr)
                    return 1
            elif kind == "current":
                c = event.current
                live = c.live
                left = live.added + live.removed + live.changed + live.links_added + live.links_removed
                print(f"event {event.seq}: {c.subsystem} observed generation {c.observed_generation}, {left} change(s) left")
                want = pending.get(c.subsystem)
                if want is not None and c.observed_generation >= want and left == 0:
                    del pending[c.subsystem]
            if not pending:
                print(f"converged: revision {revision}")
                return 0
            if time.monotonic() > deadline:
                break
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    print(f"not converged within {wait} s: {', '.join(sorted(pending))}", file=sys.stderr)
    return 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("CONTINUUM_SERVER", "127.0.0.1:7000"))
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="apply a megamodel and its templates")
    apply.add_argument("model")
    apply.add_argument("--wait", type=float, default=0,
                       help="follow Watch up to this many seconds until converged")
    args = parser.parse_args()

    pb, pb_grpc = load_stubs()
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.ModelServiceStub(channel)
        try:
            response = stub.Apply(apply_request(pb, args.model), timeout=30)
        except grpc.RpcError as e:
            print_refusal(e)
            return 1
        revision = response.revision.number
        if response.unchanged:
            print(f"unchanged: the head is already revision {revision}")
            return 0
        changed = ", ".join(f"{t.subsystem}@{t.generation}" for t in response.targets)
        print(f"applied revision {revision}: {changed}")
        if args.wait > 0:
            return follow(pb, stub, revision, response.targets, args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
