#!/usr/bin/env python3
"""Small helpers for scripts/services.sh (Python 3 standard library only).

  services_probe.py kafka HOST:PORT       Kafka Metadata request; ok when the broker lists itself
  services_probe.py hbase HOST:PORT       HBase Thrift1 getTableNames call; ok on a normal reply
  services_probe.py port HOST:PORT        ok when a TCP connect succeeds
  services_probe.py cluster-id            print a new random KRaft cluster id
  services_probe.py slf4j-bindings DIR    ok when the jars in DIR hold exactly one SLF4J binding

Exit status 0 means ok; otherwise the reason is printed on stderr and the status is 1.
Every network call has a connect and a read timeout (--timeout, default 10 s).
"""

import argparse
import base64
import os
import socket
import struct
import sys
import zipfile


class ProbeError(Exception):
    pass


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def connect(addr, timeout):
    try:
        sock = socket.create_connection(addr, timeout=timeout)
    except OSError as e:
        raise ProbeError(f"cannot connect to {addr[0]}:{addr[1]}: {e}") from None
    sock.settimeout(timeout)  # applies to every later send/recv
    return sock


class Reader:
    """Big-endian cursor over a byte string (both Kafka and Thrift binary use network order)."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ProbeError("truncated response")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def kafka_string(self):  # int16 length, -1 = null
        n = self.i16()
        return None if n < 0 else self.take(n).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Kafka: Metadata request, version 8 (the newest non-"flexible" version, so no tagged fields;
# answered by every broker from 2.3 to 4.x), with request header v1 and response header v0.

KAFKA_METADATA = 3
KAFKA_METADATA_VERSION = 8


def kafka_probe(addr, timeout):
    correlation_id = 0x5E55
    client_id = b"sessionflow-probe"
    body = struct.pack(">i", 0)            # topics: empty array = no topics (null would be all)
    body += struct.pack(">?", False)       # allow_auto_topic_creation
    body += struct.pack(">??", False, False)  # include cluster / topic authorized operations
    header = struct.pack(">hhih", KAFKA_METADATA, KAFKA_METADATA_VERSION, correlation_id,
                         len(client_id)) + client_id
    request = header + body
    with connect(addr, timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", recv_exact(sock, 4))[0]
        r = Reader(recv_exact(sock, size))
    if r.i32() != correlation_id:
        raise ProbeError("Kafka answered with a wrong correlation id")
    r.i32()  # throttle_time_ms
    brokers = []
    for _ in range(r.i32()):
        node_id, host, port, _rack = r.i32(), r.kafka_string(), r.i32(), r.kafka_string()
        brokers.append((node_id, host, port))
    cluster_id = r.kafka_string()
    controller_id = r.i32()
    if not any(h == addr[0] and p == addr[1] for _, h, p in brokers):
        raise ProbeError(f"broker not yet in its own metadata (brokers={brokers})")
    if controller_id < 0:
        raise ProbeError("metadata names no controller yet")
    listed = ",".join(f"{n}@{h}:{p}" for n, h, p in brokers)
    print(f"kafka ok: cluster {cluster_id}, brokers {listed}, controller {controller_id}")


# ---------------------------------------------------------------------------------------------
# HBase Thrift1: Hbase.getTableNames() over TBinaryProtocol (strict) on a buffered transport,
# i.e. the bytes go straight onto the socket with no frame-length prefix.

T_STOP, T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64, T_STRING, T_STRUCT, T_MAP, T_SET, \
    T_LIST = 0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15
THRIFT_VERSION_1 = 0x80010000
THRIFT_CALL, THRIFT_REPLY, THRIFT_EXCEPTION = 1, 2, 3


class SocketReader(Reader):
    """Reader that pulls bytes from the socket as needed (a Thrift reply has no length prefix)."""

    def __init__(self, sock):
        super().__init__(b"")
        self.sock = sock

    def take(self, n):
        return recv_exact(self.sock, n)

    def binary(self):
        return self.take(self.i32())

    def skip(self, ttype):
        """Skip one value of a Thrift type (for fields this probe does not care about)."""
        fixed = {T_BOOL: 1, T_BYTE: 1, T_DOUBLE: 8, T_I16: 2, T_I32: 4, T_I64: 8}
        if ttype in fixed:
            self.take(fixed[ttype])
        elif ttype == T_STRING:
            self.binary()
        elif ttype == T_STRUCT:
            self.read_struct()
        elif ttype == T_MAP:
            kt, vt, n = self.i8(), self.i8(), self.i32()
            for _ in range(n):
                self.skip(kt)
                self.skip(vt)
        elif ttype in (T_SET, T_LIST):
            et, n = self.i8(), self.i32()
            for _ in range(n):
                self.skip(et)
        else:
            raise ProbeError(f"unknown Thrift type {ttype} in reply")

    def read_struct(self, wanted=None):
        """Read a struct; returns {field id: value} for ids in `wanted` (a dict id -> reader)."""
        out = {}
        while True:
            ttype = self.i8()
            if ttype == T_STOP:
                return out
            fid = self.i16()
            if wanted and fid in wanted:
                out[fid] = wanted[fid](ttype)
            else:
                self.skip(ttype)


def hbase_probe(addr, timeout):
    name = b"getTableNames"
    seqid = 1
    call = struct.pack(">I", THRIFT_VERSION_1 | THRIFT_CALL)
    call += struct.pack(">i", len(name)) + name + struct.pack(">i", seqid)
    call += bytes([T_STOP])  # getTableNames_args is an empty struct
    with connect(addr, timeout) as sock:
        sock.sendall(call)
        r = SocketReader(sock)
        version = r.i32() & 0xFFFFFFFF
        if version & 0xFFFF0000 != THRIFT_VERSION_1:
            raise ProbeError(f"not a strict Thrift binary reply (first word {version:#010x})")
        mtype = version & 0xFF
        r.binary()  # method name
        if r.i32() != seqid:
            raise ProbeError("Thrift reply with a wrong sequence id")

        def read_str(ttype):
            return r.binary().decode("utf-8", "replace") if ttype == T_STRING else r.skip(ttype)

        if mtype == THRIFT_EXCEPTION:  # TApplicationException {1: message, 2: type}
            exc = r.read_struct({1: read_str})
            raise ProbeError(f"Thrift application exception: {exc.get(1)}")
        if mtype != THRIFT_REPLY:
            raise ProbeError(f"unexpected Thrift message type {mtype}")

        def read_names(ttype):
            if ttype != T_LIST:
                r.skip(ttype)
                return None
            _etype, n = r.i8(), r.i32()
            return [r.binary().decode("utf-8", "replace") for _ in range(n)]

        def read_ioerror(ttype):  # IOError {1: message, 2: canRetry}
            return r.read_struct({1: read_str}).get(1) if ttype == T_STRUCT else r.skip(ttype)

        # getTableNames_result {0: success list<Text>, 1: io IOError}
        result = r.read_struct({0: read_names, 1: read_ioerror})
    if 1 in result:
        raise ProbeError(f"HBase IOError: {(result[1] or '').splitlines()[0][:300]}")
    if result.get(0) is None:
        raise ProbeError("getTableNames reply without a result")
    print(f"hbase ok: {len(result[0])} table(s) {result[0]}")


# ---------------------------------------------------------------------------------------------

def port_probe(addr, timeout):
    with connect(addr, timeout):
        pass


def cluster_id():
    # A KRaft cluster id is a Kafka Uuid: 16 random bytes, URL-safe base64 without padding.
    # Kafka's own generator never hands out ids that start with '-' (they read like options).
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):
            print(text)
            return


def slf4j_bindings(lib_dir):
    markers = ("org/slf4j/impl/StaticLoggerBinder.class",             # SLF4J 1.x binding
               "META-INF/services/org.slf4j.spi.SLF4JServiceProvider")  # SLF4J 2.x provider
    found = []
    for jar in sorted(os.listdir(lib_dir)):
        if jar.endswith(".jar"):
            with zipfile.ZipFile(os.path.join(lib_dir, jar)) as z:
                names = set(z.namelist())
            if any(m in names for m in markers):
                found.append(jar)
    if len(found) != 1:
        raise ProbeError(f"expected exactly one SLF4J binding in {lib_dir}, found {found}")
    print(f"slf4j binding: {found[0]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=10.0, help="socket timeout in seconds")
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("kafka", "hbase", "port"):
        sub.add_parser(cmd).add_argument("addr", type=parse_addr)
    sub.add_parser("cluster-id")
    sub.add_parser("slf4j-bindings").add_argument("dir")
    args = p.parse_args()
    try:
        if args.cmd == "kafka":
            kafka_probe(args.addr, args.timeout)
        elif args.cmd == "hbase":
            hbase_probe(args.addr, args.timeout)
        elif args.cmd == "port":
            port_probe(args.addr, args.timeout)
        elif args.cmd == "cluster-id":
            cluster_id()
        else:
            slf4j_bindings(args.dir)
    except (ProbeError, OSError) as e:  # OSError: e.g. socket.timeout, connection reset
        print(f"{args.cmd}: {e or type(e).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
