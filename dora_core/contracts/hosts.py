"""Which host names are this machine: one rule for the API and the dashboard.

Both refuse to act for requests that name another host (DNS rebinding) and
the API refuses to listen beyond loopback without a token; they must agree
on what loopback is. Standard library only, so the dashboard can use it
without the training stack.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

# Where `make run` serves the dashboard.
LOCAL_DASHBOARD = "http://127.0.0.1:8050"


def is_loopback_host(host: str) -> bool:
    """True for a loopback IP literal (127.0.0.0/8, ::1, ::ffff:127.x) or the name ``localhost``.

    Only literals count: a name such as ``127.0.0.1.example.com`` starts like a
    loopback address but resolves wherever its DNS says.
    """
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def dashboard_run_url(api_url: str, run_id: int, dash_url: str | None) -> str | None:
    """A run's dashboard page: under ``dash_url`` (``DORA_DASH_URL``), else under make run's
    dashboard when the API is on this machine; None when neither says where it is."""
    if dash_url is None and is_loopback_host(urlsplit(api_url).hostname or ""):
        dash_url = LOCAL_DASHBOARD
    return f"{dash_url.rstrip('/')}/runs/{run_id}" if dash_url else None
