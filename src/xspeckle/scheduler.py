"""Dask scheduler addresses: checked before any work, reached or refused within seconds.

``distributed.Client(address)`` raises a bare ``ValueError`` for a malformed address and
retries a closed port until its timeout (about 20 s).  :func:`check_scheduler_address`
checks the syntax and opens one TCP connection with a short timeout instead, so that
``xspeckle retrieve --scheduler ...`` fails at once with one line that names the cause.
"""

from __future__ import annotations

import re
import socket

from xspeckle.errors import InputError

__all__ = ["check_scheduler_address", "CONNECT_TIMEOUT_S", "NO_WORKER_TIMEOUT_S"]

#: seconds allowed for the TCP connection to the scheduler
CONNECT_TIMEOUT_S = 5.0
#: a distributed run with no live worker for this long fails (``pipeline.engines.DaskEngine``)
NO_WORKER_TIMEOUT_S = 30.0

_TCP = ("tcp", "tls", "ws", "wss")
_ADDR = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]+)/?$")
_EXAMPLE = "give HOST:PORT or tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786"


def check_scheduler_address(address: str, *, reach: bool = True, timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[str, int]:
    """Check a Dask scheduler address; optionally open (and close) a TCP connection to it.

    Parameters
    ----------
    address : str
        ``tcp://host:port``, ``tls://host:port`` or ``host:port`` (``inproc://`` is
        accepted without a connection test).
    reach : bool
        Also connect to it (a closed port is refused at once, an unreachable host after
        *timeout_s*).
    timeout_s : float
        Connection timeout in seconds.

    Returns
    -------
    (host, port); ``("", 0)`` for an in-process address.

    Raises
    ------
    InputError
        Malformed address, unknown host, or no scheduler listening there.
    """
    text = str(address).strip()
    if text.startswith("inproc://"):
        return "", 0
    m = _ADDR.match(text)
    if m is None:
        raise InputError(f"--scheduler {address!r}: not a scheduler address; {_EXAMPLE}")
    scheme = m.group("scheme") or "tcp"
    if scheme not in _TCP:
        raise InputError(f"--scheduler {address!r}: unsupported protocol {scheme!r}; use tcp:// or tls://")
    host, port = m.group("host").strip("[]"), int(m.group("port"))
    if not 0 < port < 65536:
        raise InputError(f"--scheduler {address!r}: port {port} is outside 1..65535")
    if reach:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except socket.gaierror:
            raise InputError(f"--scheduler {address!r}: unknown host {host!r}; check the address") from None
        except (socket.timeout, TimeoutError):
            raise InputError(f"--scheduler {address!r}: no answer within {timeout_s:g} s; check the address "
                             "and that the scheduler runs and is reachable (firewall)") from None
        except OSError as exc:
            raise InputError(f"--scheduler {address!r}: cannot connect ({exc.strerror or exc}); is a Dask "
                             f"scheduler running there? start one with: dask scheduler --port {port}") from None
    return host, port
