"""The HTTP session that POSTs to push services: it connects only to public addresses.

A subscription's endpoint is chosen by a browser, that is by whoever holds a user's token, and the
service POSTs to it: without this check a subscription to `https://metadata.internal/…` would make
the worker reach inside the network. The endpoint's host is judged when subscribing (keys.py); here
the address the socket actually connected to is checked before a byte is sent, so a name that
resolves (or is re-bound) to a loopback, private, link-local or otherwise non-global address is
refused whatever DNS said earlier. Proxies from the environment are not used for the same reason.

`WEBPUSH_RESOLVE` (development only; config.py refuses it otherwise) maps a host name to the address
to connect to, curl's --resolve: tests point `push.test.example` at their local push service, and
only such an explicitly named address may be private. TLS still verifies the host name (a private CA
from WEBPUSH_CA_FILE).
"""
import ipaddress

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool


class PrivateAddress(requests.ConnectionError):
    """The push service's address is not a public one."""


def is_public(address):
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def session(resolve=None, ca_file=None):
    """A requests session for push services (https only, public peers, `resolve` overrides)."""
    resolve = dict(resolve or {})

    class Connection(HTTPSConnection):
        def __init__(self, host, *args, **kwargs):
            super().__init__(host, *args, **kwargs)
            self._allowed = resolve.get(host.rstrip(".").lower())

        def _new_conn(self):
            name = self._dns_host
            if self._allowed:
                self._dns_host = self._allowed      # connect there; TLS (after this) still checks `name`
            try:
                sock = super()._new_conn()
            finally:
                self._dns_host = name
            peer = sock.getpeername()[0]
            if peer != self._allowed and not is_public(peer):
                sock.close()
                raise PrivateAddress(f"refused to connect to a non-public address for {self.host}")
            return sock

    class Pool(HTTPSConnectionPool):
        ConnectionCls = Connection

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"https": Pool}

        def send(self, request, *args, **kwargs):
            if not request.url.startswith("https://"):
                raise requests.ConnectionError("push services are reached over https only")
            return super().send(request, *args, **kwargs)

    http = requests.Session()
    http.trust_env = False
    http.mount("https://", Adapter())
    http.mount("http://", Adapter())
    if ca_file:
        http.verify = ca_file
    return http
