"""A pausable TCP proxy between a client under test and a real server (Redis, in the stream tests).

It forwards bytes both ways and lets a test decide when the server's bytes reach the client:

    proxy = TcpProxy(("127.0.0.1", 6390)).start()     # listens on proxy.port
    proxy.hold(after=b"SUBSCRIBE")   # keep back what the server sends once the client sent this
    proxy.connections[-1].held       # bytes the server sent that the client has not got yet
    proxy.release(count)             # pass the first `count` held bytes (None: all, and stop holding)
    proxy.refuse(1)                  # close the next connection as soon as it is accepted
    proxy.cut()                      # the server "goes away": every connection closed, both ends
    proxy.close()

It knows nothing of the protocol: `after` is a byte string looked for in what the client
sends (a command's name), so a client's handshake is answered before the hold starts. It runs
in threads of its own, so a client blocked in a plain socket call (a process gevent did not
patch) never stops it.
"""
import socket
import threading

CHUNK = 65536


class Connection:
    """One client connection and its connection to the server; `sent` is every byte the client
    sent (in order), `received` the count the server sent, `delivered` the count written to the
    client, `held` what is kept back."""

    def __init__(self, proxy, client, server):
        self.proxy, self.client, self.server = proxy, client, server
        self.sent, self.held, self.received, self.delivered = b"", b"", 0, 0
        self.holding = False
        self.closed = False
        self._outbox, self._ready = [], threading.Condition(proxy.lock)
        for target in (self._upstream, self._downstream, self._writer):
            threading.Thread(target=target, daemon=True).start()

    def __repr__(self):
        return f"<Connection sent={self.sent!r} held={self.held!r} received={self.received}>"

    def _upstream(self):
        """Client to server; starts holding when the client sends the proxy's `after`."""
        while True:
            data = self._recv(self.client)
            if not data:
                return self.close()
            with self.proxy.lock:
                self.sent += data
                after = self.proxy.after
                if after is not None and after in self.sent:
                    self.holding = True
            try:
                self.server.sendall(data)
            except OSError:
                return self.close()

    def _downstream(self):
        """Server to client: held, or queued for the writer (which alone may block on the client)."""
        while True:
            data = self._recv(self.server)
            if not data:
                return self.close()
            with self.proxy.lock:
                self.received += len(data)
                if self.holding:
                    self.held += data
                else:
                    self._outbox.append(data)
                    self._ready.notify()

    def _writer(self):
        while True:
            with self.proxy.lock:
                while not self._outbox and not self.closed:
                    self._ready.wait()
                if self.closed:
                    return
                data = b"".join(self._outbox)
                self._outbox.clear()
            try:
                self.client.sendall(data)
            except OSError:
                return self.close()
            with self.proxy.lock:
                self.delivered += len(data)

    def pass_held(self, count=None):
        """Send the first `count` held bytes (None: all) on; the caller holds the proxy's lock."""
        count = len(self.held) if count is None else count
        data, self.held = self.held[:count], self.held[count:]
        if data:
            self._outbox.append(data)
            self._ready.notify()

    def idle(self):
        """Everything the server sent is in the client's socket (none held, queued or being written)."""
        with self.proxy.lock:
            return self.delivered == self.received

    @staticmethod
    def _recv(sock):
        try:
            return sock.recv(CHUNK)
        except OSError:
            return b""

    def close(self):
        """Both ends closed; shutdown first, as a close alone does not wake a thread in recv."""
        with self.proxy.lock:
            if self.closed:
                return
            self.closed = True
            self._ready.notify_all()
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class TcpProxy:
    """Listens on 127.0.0.1 (a free port) and connects each client it accepts to `upstream`."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.RLock()
        self.connections = []     # Connection, the newest last
        self.after = None         # hold the server's bytes of a connection once its client sent this
        self._refuse = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return   # closed
            with self.lock:
                refused, self._refuse = self._refuse > 0, max(0, self._refuse - 1)
            if refused:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.connections.append(Connection(self, client, server))

    def hold(self, after=b""):
        """From now on keep back what the server sends on each connection (open or to come)
        once its client has sent `after` (b"": at once)."""
        with self.lock:
            self.after = after
            for connection in self.connections:
                if after in connection.sent:
                    connection.holding = True

    def release(self, count=None):
        """Pass the first `count` bytes held on the newest connection and keep holding; None:
        pass everything held on every connection and stop holding."""
        with self.lock:
            if count is not None:
                self.connections[-1].pass_held(count)
                return
            self.after = None
            for connection in self.connections:
                connection.holding = False
                connection.pass_held()

    def refuse(self, count=1):
        """Close the next `count` connections as soon as they are accepted (the server is down)."""
        with self.lock:
            self._refuse += count

    def cut(self):
        """Close every connection, both ends: the server went away under its clients."""
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            connection.close()

    def close(self):
        try:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accepting thread
        except OSError:
            pass
        self._listener.close()
        self.cut()
