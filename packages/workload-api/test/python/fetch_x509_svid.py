"""A Workload API client on another gRPC stack than ours: Python's grpcio
(gRPC's C core) with messages compiled by protoc from the vendored
workloadapi.proto, certificates read by Python's cryptography.

usage: fetch_x509_svid.py <generated-dir> <socket-path> <messages> [--no-header]
Prints one JSON line per message received (at most <messages>), or the error.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
import workloadapi_pb2  # noqa: E402



def serial_hex(serial):
    """The serial as OpenSSL prints it (BN_bn2hex, as Node's X509Certificate.serialNumber): whole bytes, so a leading 0 digit stays."""
    digits = format(serial, "X")
    return digits if len(digits) % 2 == 0 else "0" + digits


_, _, socket_path, count, *flags = sys.argv
metadata = [] if "--no-header" in flags else [("workload.spiffe.io", "true")]

with grpc.insecure_channel("unix://" + socket_path) as channel:
    fetch = channel.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=workloadapi_pb2.X509SVIDRequest.SerializeToString,
        response_deserializer=workloadapi_pb2.X509SVIDResponse.FromString,
    )
    try:
        for i, response in enumerate(fetch(workloadapi_pb2.X509SVIDRequest(), metadata=metadata, timeout=20)):
            out = []
            for svid in response.svids:
                leaf = x509.load_der_x509_certificate(svid.x509_svid)
                key = serialization.load_der_private_key(svid.x509_svid_key, None)
                same_key = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
                out.append({"spiffe_id": svid.spiffe_id, "uris": uris, "serial": serial_hex(leaf.serial_number), "key_matches": same_key, "bundle_bytes": len(svid.bundle)})
            print(json.dumps({"svids": out}), flush=True)
            if i + 1 >= int(count):
                break
    except grpc.RpcError as error:
        print(json.dumps({"code": error.code().name, "details": error.details()}), flush=True)
