"""A TCP proxy on 127.0.0.1 that can make its connections silently dead.

``freeze()`` stops forwarding on every connection open at that moment while
keeping their sockets open: the client can still write (the kernel buffers
it) but never hears anything again, and gets no error. That is what a client
sees after a broker failover behind a virtual IP or a NAT/firewall timeout (a
half-open connection, a pub/sub subscription silently lost). Connections
opened after the freeze are forwarded normally, as they would reach the new
primary. ``delay`` holds every chunk sent back to the client, to make a
broker slow.
"""

from __future__ import annotations

import socket
import threading
import time


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.delay = 0.0
        self._generation = 0  # connections of an older generation are frozen
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    def url(self, broker_url: str) -> str:
        """``broker_url`` with its port replaced by the proxy's."""
        return broker_url.replace(f":{self.upstream[1]}", f":{self.port}", 1)

    def freeze(self) -> None:
        with self._lock:
            self._generation += 1

    def close(self) -> None:
        self._closed = True
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self.listener, *sockets]:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                generation = self._generation
                self._sockets += [client, server]
            for src, dst, back in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, generation, back),
                                 name="tcpproxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int, back: bool) -> None:
        src.settimeout(0.2)
        while not self._closed:
            if generation != self._generation:
                time.sleep(0.2)  # frozen: read nothing, send nothing, close nothing
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if generation != self._generation:
                continue  # froze while we waited: this chunk is lost, as on a dead link
            if not data:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if back and self.delay:
                time.sleep(self.delay)
            try:
                dst.sendall(data)
            except OSError:
                return
