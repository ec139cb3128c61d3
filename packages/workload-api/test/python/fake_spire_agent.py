"""A Workload API server on another gRPC stack than ours (Python's grpcio,
generic method handlers, messages compiled by protoc), standing in for a
SPIRE agent: it checks the security header and streams X509SVIDResponses
read from a JSON file, the next one each time a line arrives on stdin.

usage: fake_spire_agent.py <generated-dir> <socket-path> <messages.json>
messages.json: [[{"spiffe_id", "x509_svid", "x509_svid_key", "bundle"} (base64 DER), ...], ...]
"""
import base64
import json
import queue
import sys
import threading
from concurrent import futures

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
import workloadapi_pb2  # noqa: E402

_, _, socket_path, messages_file = sys.argv
with open(messages_file) as f:
    messages = json.load(f)
advance = queue.Queue()


def read_stdin():
    for _ in sys.stdin:
        advance.put(True)


def fetch_x509_svid(request, context):
    if dict(context.invocation_metadata()).get("workload.spiffe.io") != "true":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
    for i, message in enumerate(messages):
        if i > 0:
            advance.get()
        svids = [workloadapi_pb2.X509SVID(spiffe_id=s["spiffe_id"], **{k: base64.b64decode(s[k]) for k in ("x509_svid", "x509_svid_key", "bundle")}) for s in message]
        yield workloadapi_pb2.X509SVIDResponse(svids=svids)
    while context.is_active():
        threading.Event().wait(0.1)


handler = grpc.method_handlers_generic_handler("SpiffeWorkloadAPI", {
    "FetchX509SVID": grpc.unary_stream_rpc_method_handler(
        fetch_x509_svid,
        request_deserializer=workloadapi_pb2.X509SVIDRequest.FromString,
        response_serializer=workloadapi_pb2.X509SVIDResponse.SerializeToString,
    ),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("unix:" + socket_path)
server.start()
threading.Thread(target=read_stdin, daemon=True).start()
print("ready", flush=True)
server.wait_for_termination()
