"""A fake istio-cni ZDS server on Python's socket module (send_fds), a peer we did not write.

Usage: zds_server.py <generated-modules-dir> <socket-path>
Listens on a SOCK_SEQPACKET unix socket, as istio-cni does, then obeys one
JSON command per line on stdin and prints one JSON object per line:

  {"op": "accept"}                       -> {"connected": n, "hello": hex}
  {"op": "add", "uid", "name", "namespace", "serviceAccount", "fds": [paths]}
  {"op": "keep", "uid"} / {"op": "del", "uid", "fds": [paths]} / {"op": "snapshot", "fds": [paths]}
  {"op": "raw", "hex", "fds": [paths]}    (any bytes, for hostile messages)
      each of those sends one message (the descriptors of the files at
      `paths` as SCM_RIGHTS) and then reads one reply, as istio-cni does:
                                         -> {"ack": error text, "raw": hex} | {"eof": true} | {"timeout": true}
  {"op": "silence", "ms"}                -> {"silent": true} if nothing arrives meanwhile
  {"op": "close"}                        -> {"closed": true}
Messages are encoded with protoc's Python code for the vendored zds.proto.
"""
import json
import os
import select
import socket
import sys

sys.path.insert(0, sys.argv[1])
import zds_pb2  # noqa: E402

path = sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(path)
server.listen(8)
conn = None
connections = 0


def say(**fields):
    print(json.dumps(fields), flush=True)


def send(data, paths):
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        if fds:
            socket.send_fds(conn, [data], fds)
        else:
            conn.send(data)
    finally:
        for fd in fds:
            os.close(fd)


def read_reply(timeout=10):
    ready, _, _ = select.select([conn], [], [], timeout)
    if not ready:
        return {"timeout": True}
    data = conn.recv(1024)
    if not data:
        return {"eof": True}
    response = zds_pb2.WorkloadResponse.FromString(data)
    return {"ack": response.ack.error, "raw": data.hex()}


print(json.dumps({"listening": path}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    op = command["op"]
    fds = command.get("fds", [])
    try:
        if op == "accept":
            server.settimeout(10)
            conn, _ = server.accept()
            connections += 1
            conn.settimeout(5)
            say(connected=connections, hello=conn.recv(1024).hex())
            continue
        if op == "close":
            conn.close()
            say(closed=True)
            continue
        if op == "silence":
            ready, _, _ = select.select([conn], [], [], command["ms"] / 1000)
            say(silent=not ready, data=conn.recv(1024).hex() if ready else None)
            continue
        request = zds_pb2.WorkloadRequest()
        if op == "add":
            request.add.uid = command["uid"]
            if command.get("name") is not None:
                request.add.workload_info.name = command["name"]
                request.add.workload_info.namespace = command["namespace"]
                request.add.workload_info.service_account = command["serviceAccount"]
        elif op == "keep":
            request.keep.uid = command["uid"]
        elif op == "del":
            getattr(request, "del").uid = command["uid"]  # `del` is a Python keyword
        elif op == "snapshot":
            request.snapshot_sent.SetInParent()
        data = bytes.fromhex(command["hex"]) if op == "raw" else request.SerializeToString()
        send(data, fds)
        say(**read_reply())
    except (BrokenPipeError, ConnectionResetError) as err:
        say(error=str(err))
