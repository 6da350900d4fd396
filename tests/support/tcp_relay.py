"""A TCP relay for fault tests, on a loopback port of its own: clients connect to it, it connects each one
to the real server and copies bytes both ways. It can take the server away and give it back, or stall:

- `stop()` closes its listening socket and every connection through it: the clients see what they see when
  the server's host goes away (their connections end, new ones are refused), while the server itself,
  shared with other tests, runs on untouched. `start()` again listens on the same port.
- `pause()` stops the copying (the connections stay open and silent, as behind a switch that drops every
  packet; new connections are accepted but carry nothing) until `resume()`.

toxiproxy does this too, but it is a Go binary and a server to drive over HTTP; these faults need no more
than this. Every thread is a daemon, and `close()` (or `stop()`) ends them all.
"""
from __future__ import annotations

import selectors
import socket
import threading

BUFFER = 65536


class TcpRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted since it was made
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    def start(self) -> TcpRelay:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The same port again after a stop, though the closed connections linger in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="tcp-relay-accept", daemon=True).start()
        return self

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

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        self._flowing.set()  # a paused pump wakes and finds its sockets closed
        if listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone does not on Linux.
            _shut(listener)
        for sock in sockets:
            _shut(sock)

    close = stop

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    _shut(client)
                    _shut(upstream)
                    return
                self._sockets.update((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), name="tcp-relay-pump",
                             daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            with selectors.DefaultSelector() as selector:
                for sock in peers:
                    selector.register(sock, selectors.EVENT_READ)
                while True:
                    # Paused: nothing is read, so nothing is forwarded either way (the kernel buffers fill
                    # and the senders' writes block, as on a stalled link).
                    self._flowing.wait()
                    for key, _ in selector.select(timeout=0.2):
                        if not self._flowing.is_set():
                            break
                        data = key.fileobj.recv(BUFFER)  # type: ignore[union-attr]
                        if not data:
                            return
                        peers[key.fileobj].sendall(data)  # type: ignore[index]
        except (OSError, ValueError):  # closed by stop() (a closed socket's fileno is -1: ValueError)
            return
        finally:
            with self._lock:
                self._sockets.difference_update(peers)
            for sock in peers:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
