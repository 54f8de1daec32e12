"""Fault injection for the embedded API server: failed requests, dropped watches, outages.

Tests use the :class:`FaultInjector` (``kube.faults``) to prove that clients survive what real
clusters do to them. The API server asks :meth:`FaultInjector.request_failure` for every
request (a share of them is answered with a 429/503 ``Status``, 429 with ``Retry-After``) and
gives the injector a :class:`ServerControl` whose methods run on the server's event loop
(close every open watch stream; stop and restart listening on the same port).
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Protocol

from ..status import StatusError, service_unavailable, too_many_requests

logger = logging.getLogger(__name__)


class ServerControl(Protocol):
    """What the API server lets the injector do (thread-safe)."""

    def drop_watches(self) -> int: ...
    def pause(self, seconds: float) -> None: ...


class FaultInjector:
    """Switchable faults; every method is safe to call from any thread."""

    def __init__(self, *, enabled: bool = True, seed: int | None = None) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._rate = 0.0
        self._codes: tuple[int, ...] = (429, 503)
        self._retry_after = 1
        self._random = random.Random(seed)
        self._server: ServerControl | None = None

    def attach(self, server: ServerControl | None) -> None:
        """Called by the API server when it starts (and with None when it stops)."""
        self._server = server

    def _require(self, what: str) -> ServerControl | None:
        if not self.enabled:
            raise RuntimeError(f"Fault injection ({what}) is disabled for this embedded Kubernetes; create it "
                               "with EmbeddedKubernetes(faults=True) or the master 'embedded://?faults=true'.")
        return self._server

    def drop_watches(self) -> int:
        """Close every open watch stream now (clients see the stream end); returns how many."""
        server = self._require("drop_watches")
        dropped = server.drop_watches() if server else 0
        logger.info("Fault injection: dropped %d watch streams", dropped)
        return dropped

    def set_error_rate(self, rate: float, codes: tuple[int, ...] = (429, 503), retry_after: int = 1) -> None:
        """Answer ``rate`` (0..1) of requests with one of ``codes`` (429 carries Retry-After)."""
        self._require("set_error_rate")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"set_error_rate: rate must be between 0 and 1, got {rate!r}.")
        unknown = [c for c in codes if c not in (429, 500, 503, 504)]
        if unknown or not codes:
            raise ValueError(f"set_error_rate: codes must be some of 429, 500, 503, 504, got {codes!r}.")
        with self._lock:
            self._rate, self._codes, self._retry_after = float(rate), tuple(codes), int(retry_after)
        logger.info("Fault injection: %.0f%% of requests fail with %s", rate * 100, codes)

    def pause(self, seconds: float) -> None:
        """Stop listening (connections are refused) for ``seconds``, then listen on the same port again."""
        server = self._require("pause")
        if server is not None:
            server.pause(seconds)

    def request_failure(self) -> StatusError | None:
        """The error to answer the current request with, or None (called by the API server)."""
        if not self._rate:
            return None
        with self._lock:
            if self._random.random() >= self._rate:
                return None
            code = self._random.choice(self._codes)
            retry_after = self._retry_after
        if code == 429:
            return too_many_requests(retry_after)
        if code == 503:
            error = service_unavailable()
            error.headers["Retry-After"] = str(retry_after)
            return error
        reason = {500: "InternalError", 504: "Timeout"}[code]
        return StatusError(code, reason, f"injected fault: the server answered {code} {reason}")
