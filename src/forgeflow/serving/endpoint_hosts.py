"""Reaching an endpoint the way Azure's are reached: at a URL whose path is exactly `/score`.

Azure gives every endpoint a host name of its own; some clients (langchain-community's AzureMLChatOnlineEndpoint)
insist on that path. forgeflow offers two ways:
- a host name per endpoint, NAME.DOMAIN (the server's `--endpoint-domain`, `localhost` by default), routed by the
  request's Host header: for wildcard DNS or a reverse proxy in front of the servers (browsers and curl resolve
  NAME.localhost to loopback; glibc, so Python's own HTTP clients, does not);
- a port per endpoint (the endpoint's `port` setting), on which every server of the workspace also listens.
A request that arrives either way is served as `/endpoints/NAME/<its path>` would be, through the same guard and
gateway. This module holds the rules (the domain, the port setting, which endpoint a Host header names, the URLs
`online-endpoint show` gives) and `EndpointAddresses`, the table of names and ports a server routes by; the
middleware and the listeners are api/endpoint_addresses.py's.

Like the domain, the ports endpoints may have are each server's own choice (`forgeflow serve --endpoint-ports`,
FORGEFLOW_ENDPOINT_PORTS, 9000-9999 by default): a port is checked against the range of the server that receives
the request setting it, and a server listens only on the ports in its range. The default is above the ports that
need root, below Linux's ephemeral ports (32768-60999, where processes.free_port finds the model instances' ports),
and clear of the ports of Postgres (5432), MLflow (5000), Ray (6379, 8265, 10001 and its workers' 10002-19999) and
forgeflow's own server (8765). Host names ignore case, so of endpoint names equal but for case one has the host
name (host_owners); a name whose host name is the server's own has none: requests there stay the server's.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from forgeflow.errors import Conflict, InvalidInput

DEFAULT_DOMAIN = "localhost"
DOMAIN_ENV = "FORGEFLOW_ENDPOINT_DOMAIN"
DEFAULT_PORTS = "9000-9999"
PORTS_ENV = "FORGEFLOW_ENDPOINT_PORTS"
MAX_PORT = 65535
TABLE_TTL_S = 1.0  # the longest a server routes by a table another server's change made stale
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NAME_LABEL = re.compile(r"[a-z][a-z0-9-]{2,31}")  # what an endpoint name can be, lowercased (names.py)


def check_domain(domain: str | None = None) -> str:
    """The domain endpoints' host names end in (given, else FORGEFLOW_ENDPOINT_DOMAIN, else `localhost`),
    lowercased; an empty one turns host names off."""
    value = domain if domain is not None else os.environ.get(DOMAIN_ENV, DEFAULT_DOMAIN)
    value = value.strip().lower().strip(".")
    if value and not all(_LABEL.fullmatch(label) for label in value.split(".")):
        raise InvalidInput(f"endpoint domain {value!r} is not a DNS name: use labels of letters, digits and dashes "
                           "joined by dots, e.g. endpoints.example.com (or '' for no host names)",
                           field="endpoint_domain")
    return value


def check_port_range(spec: str | None = None) -> range:
    """The ports endpoints may have on this server: `FIRST-LAST` or one port (given, else FORGEFLOW_ENDPOINT_PORTS,
    else DEFAULT_PORTS)."""
    value = (spec if spec is not None else os.environ.get(PORTS_ENV, DEFAULT_PORTS)).strip()
    first, dash, last = value.partition("-")
    last = last if dash else first
    if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last) <= MAX_PORT):
        raise InvalidInput(f"--endpoint-ports {value!r}: give the ports endpoints may have as FIRST-LAST, from 1 to "
                           f"{MAX_PORT}, e.g. --endpoint-ports {DEFAULT_PORTS} (or {PORTS_ENV})",
                           field="endpoint_ports")
    return range(int(first), int(last) + 1)


def describe_ports(ports: range) -> str:
    return f"{ports.start}-{ports.stop - 1}" if len(ports) > 1 else str(ports.start)


def check_port(value: Any, ports: range) -> int | None:
    """An endpoint's own port: a whole number in `ports` (the server's range), or None for none."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # 9001.0: a JSON number may come as a float
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PORT:
        raise InvalidInput(f"port must be a whole number from 1 to {MAX_PORT} (or null: no port of its own), "
                           f"got {value!r}", field="port")
    if value not in ports:
        raise InvalidInput(f"port {value} is outside the ports this server gives endpoints ({describe_ports(ports)}):"
                           " pick one in that range, or start the servers with --endpoint-ports FIRST-LAST (or "
                           f"{PORTS_ENV}) to allow others", field="port")
    return value


def url_port(url: str) -> int | None:
    """The port a server's URL names (its scheme's default when it names none)."""
    parts = urlsplit(url)
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def host_label(host: str | None, domain: str) -> str | None:
    """The endpoint name a Host header (`NAME.DOMAIN`, a port allowed) names, lowercased; None for any other host,
    and for a label no endpoint name can be."""
    if not domain or not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal names no endpoint
        return None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    label, dot, rest = name.rstrip(".").partition(".")
    if not dot or rest != domain or not _NAME_LABEL.fullmatch(label) or label.endswith("-"):
        return None
    return label


def own_label(base_url: str, domain: str) -> str | None:
    """The label of the server's own host name when that falls under the domain (ml.example.com under
    example.com): a host name no endpoint may have, or every request to the server would go to that endpoint."""
    return host_label(urlsplit(base_url).hostname, domain)


def host_owners(names: Iterable[str]) -> dict[str, str]:
    """Lowercased name -> the endpoint whose host name it is: of names equal but for case, the lowercase one when
    there is one, else the first in sorted order."""
    names, owners = sorted(names), {}
    for name in names:
        owners.setdefault(name.lower(), name)
    return owners | {name: name for name in names if name == name.lower()}


def scoring_urls(base_url: str, domain: str, name: str, port: int | None, names: Iterable[str]) -> dict[str, Any]:
    """The endpoint's Azure-style scoring URLs (path exactly `/score`) beside its `scoring_uri`: on its host name
    and on its own port (None when it has none). `names`: every endpoint's, for the host name's owner; when the
    endpoint has no host name, `host_scoring_uri` is None and `host_scoring_uri_note` says why."""
    parts = urlsplit(base_url)
    scheme, hostname = parts.scheme or "http", parts.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    server_port = f":{parts.port}" if parts.port else ""
    label, note = name.lower(), None
    owner = host_owners(names).get(label, name)
    if not domain:
        note = "host names are off: the server runs with --endpoint-domain ''"
    elif label == own_label(base_url, domain):
        note = (f"{label}.{domain} is the server's own host name, which stays the server's: use scoring_uri or "
                "port_scoring_uri, or start the servers with another --endpoint-domain")
    elif owner != name:
        note = (f"{label}.{domain} is endpoint {owner!r}'s host name (host names ignore case): use scoring_uri or "
                f"port_scoring_uri, or a name that differs from {owner!r} by more than case")
    return {
        "port": port,
        "host_scoring_uri": None if note else f"{scheme}://{label}.{domain}{server_port}/score",
        "host_scoring_uri_note": note,
        "port_scoring_uri": f"{scheme}://{hostname}:{port}/score" if port else None,
    }


class EndpointAddresses:
    """Every endpoint's name and port as the store has them (`read`: the endpoint service's `addresses`), kept in
    memory and read again once older than TABLE_TTL_S; a host name or a port finds its endpoint here."""

    def __init__(self, read: Callable[[], dict[str, int | None]], ttl_s: float = TABLE_TTL_S) -> None:
        self._read = read
        self.ttl_s = ttl_s
        self._names: dict[str, str] = {}  # lowercased name -> the endpoint whose host name it is
        self._ports: dict[int, str] = {}
        self._loaded_at: float | None = None
        self._loading = threading.Lock()

    @property
    def stale(self) -> bool:
        return self._loaded_at is None or time.monotonic() - self._loaded_at > self.ttl_s

    def refresh(self, *, force: bool = False) -> None:
        """Read the table again (blocking: a database read); one read at a time, and none while fresh unless
        forced."""
        with self._loading:
            if not force and not self.stale:
                return
            table = self._read()
            self._names, self._loaded_at = host_owners(table), time.monotonic()
            self._ports = {port: name for name, port in table.items() if port}

    def name_for(self, label: str) -> str:
        """The endpoint a host name's label names (host names ignore case); the label itself when none does, so
        the gateway answers as it answers for any unknown endpoint."""
        return self._names.get(label, label)

    def ports(self) -> dict[int, str]:
        """Port -> the endpoint that has it."""
        return dict(self._ports)


def check_port_free(port: int, name: str, endpoints: list[dict], server_urls: list[str]) -> None:
    """Conflict (naming `port`) when another endpoint has the port or a server of the workspace listens on it."""
    for row in endpoints:
        if row.get("port") == port and row["name"] != name:
            raise Conflict(f"port {port} is endpoint {row['name']!r}'s already: pick another (each endpoint's port "
                           "is its own)", field="port")
    for url in server_urls:
        if url_port(url) == port:
            raise Conflict(f"port {port} is where the forgeflow server at {url} listens: pick another",
                           field="port")


@contextmanager
def port_clash(port: int | None, applies: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """A write that another server's beat to the same port (the store's unique index refused it) as a Conflict
    naming `port`; `applies` says whether the refusal was about the port (else it is re-raised as it came)."""
    try:
        yield
    except Conflict:
        if port is None or not applies():
            raise
        raise Conflict(f"port {port} was just given to another endpoint: pick another", field="port") from None
