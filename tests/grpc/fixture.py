#!/usr/bin/python3
"""Real gRPC peers for the proxy tests, on Debian's grpcio (run with /usr/bin/python3).

`server` is a grpcio server speaking h2c with the service `tidegate.test.Echo`; every answer names
its version, so a test can tell which backend served a call. `client` runs a bounded number of
calls of one kind and prints one JSON summary. No protoc: generic handlers and raw bytes messages.

    server --listen IP:PORT --version V [--code NAME] [--grace SECONDS]
    client --target HOST:PORT --call unary|server_stream|client_stream|bidi [--count N] ...
"""

import argparse
import base64
import json
import os
import queue
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "tidegate.test.Echo"
METHODS = {
    "unary": "Unary",
    "server_stream": "ServerStream",
    "client_stream": "ClientStream",
    "bidi": "Bidi",
}
# A server left behind by a test process killed without running Drop still goes away.
SERVER_LIFETIME_S = 900
# Longest x-sleep-ms honoured, so a stray header cannot park a handler thread for long.
MAX_SLEEP_MS = 120_000


def status_code(name):
    try:
        return grpc.StatusCode[name]
    except KeyError:
        raise argparse.ArgumentTypeError(f"not a grpc.StatusCode name: {name}") from None


# ---------------------------------------------------------------------------------------------
# Server


class Echo:
    def __init__(self, version, code):
        self.version = version
        self.code = code

    def answer(self, payload):
        return f"{self.version}:".encode() + payload

    def begin(self, context):
        """The common start of every call: sleep, metadata both ways, the configured failure."""
        request = {m.key: m.value for m in context.invocation_metadata()}
        sleep_ms = min(int(request.get("x-sleep-ms", "0") or 0), MAX_SLEEP_MS)
        # In steps, so a call cancelled by a hard stop frees its thread.
        deadline = time.monotonic() + sleep_ms / 1000
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        trailing = [("x-trailer-version", self.version)]
        if "x-echo-trailer" in request:
            trailing.append(("x-echo-trailer", request["x-echo-trailer"]))
        context.set_trailing_metadata(tuple(trailing))
        if self.code is not None:
            # No initial metadata first: a trailers-only answer, as servers usually fail.
            context.abort(self.code, f"{self.version} says {self.code.name}")
        initial = [("x-version", self.version)]
        initial += [(k, v) for k, v in request.items() if k.startswith("x-echo-")]
        context.send_initial_metadata(tuple(initial))

    def unary(self, request, context):
        self.begin(context)
        return self.answer(request)

    def server_stream(self, request, context):
        """N answers `VERSION:1` .. `VERSION:N`, N from the request (3 when not a number)."""
        self.begin(context)
        try:
            n = int(request.decode())
        except ValueError:
            n = 3
        for i in range(1, n + 1):
            yield self.answer(str(i).encode())

    def client_stream(self, requests, context):
        """One answer `VERSION:<count>:<concatenation>`."""
        self.begin(context)
        received = list(requests)
        return self.answer(f"{len(received)}:".encode() + b"".join(received))

    def bidi(self, requests, context):
        """Each request answered at once, so a client can ping-pong through the proxy."""
        self.begin(context)
        for request in requests:
            yield self.answer(request)


def serve(args):
    echo = Echo(args.version, args.code)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
        # A port still held by another server must fail the start, not be shared with it.
        options=[("grpc.so_reuseport", 0)],
    )
    host, _, _ = args.listen.rpartition(":")
    try:
        port = server.add_insecure_port(args.listen)
    except RuntimeError as error:
        print(f"cannot listen on {args.listen}: {error}", file=sys.stderr, flush=True)
        return 1

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.start()
    print(f"READY {host}:{port}", flush=True)

    parent = os.getppid()
    give_up = time.monotonic() + SERVER_LIFETIME_S
    while not stopping.wait(0.2):
        if os.getppid() != parent or time.monotonic() > give_up:
            server.stop(0)
            return 2
    # GOAWAY to every connection, no new calls, in-flight calls get `grace` seconds to finish.
    server.stop(args.grace).wait(args.grace + 5)
    return 0


# ---------------------------------------------------------------------------------------------
# Client


def metadata_dict(metadata):
    out = {}
    for key, value in metadata or ():
        out[key] = value if isinstance(value, str) else base64.b64encode(value).decode()
    return out


class Result:
    def __init__(self):
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.messages = []
        self.initial = {}
        self.trailing = {}


def safe(fn):
    """A failed call may not have metadata at all."""
    try:
        return metadata_dict(fn())
    except Exception:
        return {}


def one_call(channel, kind, payload, metadata, timeout):
    path = f"/{SERVICE}/{METHODS[kind]}"
    result = Result()
    call = None
    try:
        if kind == "unary":
            response, call = channel.unary_unary(path).with_call(
                payload.encode(), metadata=metadata, timeout=timeout
            )
            result.messages = [response]
        elif kind == "server_stream":
            call = channel.unary_stream(path)(payload.encode(), metadata=metadata, timeout=timeout)
            result.messages = list(call)
        elif kind == "client_stream":
            parts = [p.encode() for p in payload.split(",")]
            response, call = channel.stream_unary(path).with_call(
                iter(parts), metadata=metadata, timeout=timeout
            )
            result.messages = [response]
        else:
            call = bidi(channel, path, payload, metadata, timeout, result)
    except grpc.RpcError as error:
        call = error
        result.code = error.code()
        result.details = error.details() or ""
    if call is not None:
        result.initial = safe(call.initial_metadata)
        result.trailing = safe(call.trailing_metadata)
    return result


def bidi(channel, path, payload, metadata, timeout, result):
    """Ping-pong: the next message goes only after the answer to the previous one has come back,
    so a proxy that holds the request stream back makes the call fail by its deadline."""
    parts = [p.encode() for p in payload.split(",")]
    answered = queue.Queue()
    done = threading.Event()
    end = time.monotonic() + timeout

    def answer_came():
        while not done.is_set() and time.monotonic() < end:
            try:
                answered.get(timeout=0.05)
                return True
            except queue.Empty:
                continue
        return False

    def requests():
        for i, part in enumerate(parts):
            if i > 0 and not answer_came():
                return
            yield part

    call = channel.stream_stream(path)(requests(), metadata=metadata, timeout=timeout)
    try:
        for response in call:
            result.messages.append(response)
            answered.put(None)
    finally:
        done.set()
    return call


def run_client(args):
    start = time.monotonic()
    end = start + args.max_seconds
    metadata = []
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--metadata wants key=value, not {item!r}", file=sys.stderr)
            return 2
        # gRPC rejects upper-case keys (HTTP/2 header names are lower case).
        metadata.append((key.lower(), value))
    payload = args.payload
    if payload is None:
        payload = {"unary": "ping", "server_stream": "3"}.get(args.call, "a,b,c")
    count = args.count
    if count is None and args.until_file is None:
        count = 1

    channel = grpc.insecure_channel(
        args.target,
        options=[
            # The environment's http_proxy must not sit between the test and tidegate.
            ("grpc.enable_http_proxy", 0),
            # The proxy's errors must reach the count, not be hidden by transparent retries.
            ("grpc.enable_retries", 0),
        ],
    )
    lock = threading.Lock()
    state = {"next": 0, "results": {}}

    def worker():
        while True:
            now = time.monotonic()
            if now >= end or (args.until_file and os.path.exists(args.until_file)):
                return
            with lock:
                index = state["next"]
                if count is not None and index >= count:
                    return
                state["next"] += 1
            timeout = end - now
            if args.deadline_ms is not None:
                timeout = min(timeout, args.deadline_ms / 1000)
            result = one_call(channel, args.call, payload, metadata, timeout)
            with lock:
                state["results"][index] = result
            if result.code != grpc.StatusCode.OK:
                # A dead target fails at once; a hot loop would starve the proxy of the CPU.
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()) + 5)

    with lock:
        results = dict(state["results"])
    summary = {
        "calls": len(results),
        "ok": 0,
        "codes": {},
        "details": [],
        "versions": {},
        "messages": [],
        "initial_metadata": {},
        "trailing_metadata": {},
        "set_cookie": None,
    }
    for index in sorted(results):
        result = results[index]
        if result.code == grpc.StatusCode.OK:
            summary["ok"] += 1
            version = result.initial.get("x-version", "")
            summary["versions"][version] = summary["versions"].get(version, 0) + 1
        else:
            name = result.code.name
            summary["codes"][name] = summary["codes"].get(name, 0) + 1
            if result.details not in summary["details"] and len(summary["details"]) < 5:
                summary["details"].append(result.details)
    first = results.get(0)
    if first is not None:
        summary["messages"] = [m.decode("utf-8", "replace") for m in first.messages]
        summary["initial_metadata"] = first.initial
        summary["trailing_metadata"] = first.trailing
        summary["set_cookie"] = first.initial.get("set-cookie")
    summary["elapsed_s"] = round(time.monotonic() - start, 3)
    print(json.dumps(summary), flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)

    server = modes.add_parser("server")
    server.add_argument("--listen", required=True, help="IP:PORT (port 0: any free port)")
    server.add_argument("--version", required=True)
    server.add_argument("--code", type=status_code, help="fail every call with this status")
    server.add_argument(
        "--grace", type=float, default=5.0, help="seconds in-flight calls get on SIGTERM"
    )

    client = modes.add_parser("client")
    client.add_argument("--target", required=True)
    client.add_argument("--call", required=True, choices=sorted(METHODS))
    client.add_argument(
        "--count", type=int, help="calls in all (default 1, unbounded with --until-file)"
    )
    client.add_argument("--concurrency", type=int, default=1)
    client.add_argument("--metadata", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    client.add_argument("--deadline-ms", type=int, help="per call")
    client.add_argument("--payload", help="unary: ping, server_stream: 3, streams: a,b,c")
    client.add_argument("--until-file", help="stop starting calls once this file exists")
    client.add_argument("--max-seconds", type=float, default=30.0, help="bound on the whole run")

    args = parser.parse_args()
    if args.mode == "server":
        code = serve(args)
    else:
        if args.concurrency < 1:
            parser.error("--concurrency must be at least 1")
        code = run_client(args)
    # grpc's own threads must not keep a finished process alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
