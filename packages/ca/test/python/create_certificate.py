"""A CreateCertificate client on another gRPC stack than ours: Python's
grpcio (gRPC's C core) with messages compiled by protoc from the vendored
ca.proto, and a CSR built by Python's cryptography.

usage: create_certificate.py <generated-dir> <host:port> <roots.pem> <server-name> <token> <spiffe-id>
Prints one JSON object: {"chain": [...], "public_key": "..."} or {"code": "...", "details": "..."}.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from istio.v1.auth import ca_pb2  # noqa: E402

_, _, address, roots_file, server_name, token, spiffe_id = sys.argv

key = ec.generate_private_key(ec.SECP256R1())
csr = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([]))
    .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
    .sign(key, hashes.SHA256())
)
request = ca_pb2.IstioCertificateRequest(csr=csr.public_bytes(serialization.Encoding.PEM).decode(), validity_duration=600)
request.metadata.update({"ImpersonatedIdentity": spiffe_id})

with open(roots_file, "rb") as f:
    credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
with grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", server_name)]) as channel:
    create = channel.unary_unary(
        "/istio.v1.auth.IstioCertificateService/CreateCertificate",
        request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
        response_deserializer=ca_pb2.IstioCertificateResponse.FromString,
    )
    try:
        response = create(request, metadata=[("authorization", "Bearer " + token), ("clusterid", "Kubernetes")], timeout=10)
        public_key = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        print(json.dumps({"chain": list(response.cert_chain), "public_key": public_key}))
    except grpc.RpcError as error:
        print(json.dumps({"code": error.code().name, "details": error.details()}))
