"""A TCP relay for fault tests: clients connect to it, it connects each one to the real server and copies
bytes both ways, and it can stall: while paused it stops copying (the connections stay open and silent, as
behind a switch that drops every packet), and new connections are accepted but carry nothing until it
resumes. Loopback only; every thread is a daemon and `close` ends them all.

toxiproxy does this too, but it is a Go binary and a server to drive over HTTP; a stall needs no more than
this."""
from __future__ import annotations

import selectors
import socket
import threading

BUFFER = 65536


class TcpRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def url_for(self, url: str) -> str:
        """`url` (redis://[:password@]host:port/db) with its address replaced by the relay's."""
        head, _, rest = url.partition("://")
        credentials, _, address = rest.rpartition("@")
        path = address.partition("/")[2]
        return f"{head}://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}/{path}"

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), name="relay-pump", daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            try:
                while not self._closed.is_set():
                    # Paused: nothing is read, so nothing is forwarded either way (the kernel buffers fill
                    # and the senders' writes block, as on a stalled link).
                    self._flowing.wait()
                    for key, _ in selector.select(timeout=0.2):
                        if not self._flowing.is_set():
                            break
                        data = key.fileobj.recv(BUFFER)
                        if not data:
                            return
                        peers[key.fileobj].sendall(data)
            except OSError:
                return
            finally:
                for sock in peers:
                    try:
                        sock.close()
                    except OSError:
                        pass
