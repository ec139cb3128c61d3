"""A delta-xDS server written with Python's grpcio (gRPC's C core), a peer we did not write.

Usage: xds_server.py <generated-modules-dir> <key.pem> <cert.pem>
Prints one JSON object per line: {"listening": port}, then what it saw.
It serves DeltaAggregatedResources through grpc's generic handlers (no
generated stubs: Debian's grpc-tools is too old) and plays one scenario:

  stream 1: read the two initial requests; push a workload, a service and a
            workload with a 3-byte address; read the reply; push a policy;
            read the reply; end with UNAVAILABLE "transport is closing".
  stream 2: read the two initial requests (they carry the versions held);
            remove the workload; read the reply; stay open.
"""
import json
import sys
import threading
from concurrent import futures

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
import authorization_pb2  # noqa: E402
import workload_pb2  # noqa: E402
import xds_pb2  # noqa: E402

ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
lock = threading.Lock()
streams = 0


def say(**fields):
    print(json.dumps(fields), flush=True)


def request_facts(req):
    return {
        "typeUrl": req.type_url,
        "nonce": req.response_nonce,
        "error": req.error_detail.message if req.HasField("error_detail") else None,
        "subscribe": list(req.resource_names_subscribe),
        "initialVersions": dict(req.initial_resource_versions),
        "nodeId": req.node.id if req.HasField("node") else None,
        "nodeName": req.node.metadata.fields["NAME"].string_value if req.HasField("node") else None,
    }


def resource(name, version, message, type_url):
    r = xds_pb2.Resource(name=name, version=version)
    r.resource.type_url = type_url
    r.resource.value = message.SerializeToString()
    return r


def workload(name, address, **extra):
    return workload_pb2.Address(workload=workload_pb2.Workload(
        uid="Kubernetes//Pod/shop/" + name, name=name, namespace="shop", service_account=name,
        addresses=[address], tunnel_protocol=workload_pb2.HBONE, node="node-1", **extra))


def delta(handler_requests, context):
    global streams
    with lock:
        streams += 1
        stream = streams
    metadata = dict(context.invocation_metadata())
    say(stream=stream, authorization=metadata.get("authorization"), clusterid=metadata.get("clusterid"))
    for _ in range(2):
        say(stream=stream, request=request_facts(next(handler_requests)))
    if stream == 1:
        api = workload("api", bytes([10, 1, 0, 5]), services={"shop/api.shop.svc.cluster.local": workload_pb2.PortList(ports=[workload_pb2.Port(service_port=80, target_port=8080)])})
        service = workload_pb2.Address(service=workload_pb2.Service(
            name="api", namespace="shop", hostname="api.shop.svc.cluster.local",
            addresses=[workload_pb2.NetworkAddress(address=bytes([10, 96, 0, 10]))],
            ports=[workload_pb2.Port(service_port=80, target_port=8080)]))
        bad = workload("bad", bytes([10, 1, 0]))
        yield xds_pb2.DeltaDiscoveryResponse(type_url=ADDRESS, nonce="py-1", resources=[
            resource("Kubernetes//Pod/shop/api", "v1", api, ADDRESS),
            resource("shop/api.shop.svc.cluster.local", "v1", service, ADDRESS),
            resource("Kubernetes//Pod/shop/bad", "v1", bad, ADDRESS),
        ])
        say(stream=stream, reply=request_facts(next(handler_requests)))
        policy = authorization_pb2.Authorization(
            name="deny-other", namespace="shop", scope=authorization_pb2.NAMESPACE, action=authorization_pb2.DENY,
            rules=[authorization_pb2.Rule(clauses=[authorization_pb2.Clause(matches=[authorization_pb2.Match(
                not_namespaces=[authorization_pb2.StringMatch(exact="shop")])])])])
        yield xds_pb2.DeltaDiscoveryResponse(type_url=AUTHORIZATION, nonce="py-2", resources=[resource("shop/deny-other", "", policy, AUTHORIZATION)])
        say(stream=stream, reply=request_facts(next(handler_requests)))
        context.abort(grpc.StatusCode.UNAVAILABLE, "transport is closing")
    yield xds_pb2.DeltaDiscoveryResponse(type_url=ADDRESS, nonce="py-3", removed_resources=["Kubernetes//Pod/shop/api"])
    say(stream=stream, reply=request_facts(next(handler_requests)))
    for req in handler_requests:
        say(stream=stream, request=request_facts(req))


def main():
    with open(sys.argv[2], "rb") as f:
        key = f.read()
    with open(sys.argv[3], "rb") as f:
        cert = f.read()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler("envoy.service.discovery.v3.AggregatedDiscoveryService", {
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            delta,
            request_deserializer=xds_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=xds_pb2.DeltaDiscoveryResponse.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    say(listening=port)
    sys.stdin.read()  # runs until the test closes our stdin
    server.stop(0)


main()
