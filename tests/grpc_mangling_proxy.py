"""A TCP proxy between a real gRPC client and the receiver that rewrites the client's gRPC messages on the wire.

grpc's client API cannot send a message whose compressed flag is set over bytes that do not inflate (it
compresses what it is given), so tests let the client compress a real message and then replace the message's
bytes in the DATA frames it sends (cleartext HTTP/2: a 9-byte header per frame, no HPACK involved). The
server's answer travels back untouched, so the client reports the status as any client would see it.

    with MangledGrpc(port, lambda flag, message: (flag, message[:10] + b"\\xff" * (len(message) - 10))) as target:
        grpc.insecure_channel(target) ...
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, END_STREAM, PADDED = 0x0, 0x1, 0x8

# (compressed flag, message bytes) -> (compressed flag, message bytes) to send instead
Rewrite = Callable[[int, bytes], tuple[int, bytes]]


class MangledGrpc:
    """Listens on an ephemeral port and forwards each connection to `127.0.0.1:port`, handing every complete
    gRPC message the client sends on a stream to `rewrite` (assumes one message per stream and frames without
    padding, which is what grpc's clients send)."""

    def __init__(self, port: int, rewrite: Rewrite) -> None:
        self._port = port
        self._rewrite = rewrite
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False

    def __enter__(self) -> str:
        self._spawn(self._accept)
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def __exit__(self, *_exc: object) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept (Linux)
        except OSError:
            pass
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._port))
            for sock in (client, server):  # frames go out one by one: no Nagle delay between them
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            self._spawn(self._client_to_server, client, server)
            self._spawn(_pump, server, client)

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        reader = _Reader(client)
        try:
            server.sendall(reader.exactly(len(PREFACE)))
            pending: dict[int, bytearray] = {}
            while True:
                head = reader.exactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
                payload = reader.exactly(length)
                if kind != DATA:
                    server.sendall(head + payload)
                    continue
                assert not flags & PADDED, "padded DATA frames are not handled"
                buffered = pending.setdefault(stream, bytearray())
                buffered += payload
                if not flags & END_STREAM:
                    continue  # the whole message is rewritten at once, when the client half-closes
                del pending[stream]
                out = b""
                if buffered:
                    flag, size = buffered[0], int.from_bytes(buffered[1:5], "big")
                    new_flag, message = self._rewrite(flag, bytes(buffered[5:5 + size]))
                    out = bytes([new_flag]) + len(message).to_bytes(4, "big") + message
                for start in range(0, max(len(out), 1), 16384):  # the default SETTINGS_MAX_FRAME_SIZE
                    chunk = out[start:start + 16384]
                    last = start + 16384 >= len(out)
                    server.sendall(_frame(DATA, END_STREAM if last else 0, stream, chunk))
        except (OSError, EOFError):
            pass
        finally:
            _close_both(client, server)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            got = self._sock.recv(n - len(buf))
            if not got:
                raise EOFError
            buf += got
        return bytes(buf)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close_both(src, dst)


def _close_both(a: socket.socket, b: socket.socket) -> None:
    for sock in (a, b):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
