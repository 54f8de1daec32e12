"""Pod IP allocation for the embedded kubelets: one loopback address per pod, 127.<block>.x.y.

Data flow: a kubelet asks :meth:`PodIPAllocator.allocate` for a pod's IP when it starts the pod
and gives it back with :meth:`release` once the pod is gone from the store. Like a real IPAM,
allocation moves forward from the last address handed out, so an address is reused only after
the range has wrapped and its pod has gone. Each node has its own block (second octet), so node
IPs never collide; 127.<block>.0.* is left out (127.0.0.1 is the host IP). The first address is
picked at random, so two embedded clusters on one machine (parallel test runs) rarely hand out
the same IP at the same time: services on fixed ports (a scheduler on 8786) would collide.
"""

from __future__ import annotations

import random
import threading


class PodIPAllocator:
    """Unique loopback IPs 127.<block>.1.1 ... 127.<block>.255.254 for one node."""

    def __init__(self, block: int = 0, start: int | None = None) -> None:
        if not 0 <= block <= 255:
            raise ValueError(f"ip_block must be between 0 and 255 (the second octet of 127.x.y.z), got {block!r}.")
        self._block = block
        self._size = 255 * 254
        self._next = random.randrange(self._size) if start is None else start % self._size
        self._used: dict[int, str] = {}
        self._by_owner: dict[str, int] = {}
        self._lock = threading.Lock()

    def _address(self, index: int) -> str:
        return f"127.{self._block}.{index // 254 + 1}.{index % 254 + 1}"

    def allocate(self, owner: str) -> str:
        """A free IP for ``owner`` (e.g. a pod uid); the same IP again if it already has one."""
        with self._lock:
            if owner in self._by_owner:
                return self._address(self._by_owner[owner])
            for step in range(self._size):
                index = (self._next + step) % self._size
                if index not in self._used:
                    self._used[index] = owner
                    self._by_owner[owner] = index
                    self._next = (index + 1) % self._size
                    return self._address(index)
        raise RuntimeError(f"node IP block 127.{self._block}.0.0/16 has no free pod IP left ({self._size} in use).")

    def release(self, owner: str) -> None:
        with self._lock:
            index = self._by_owner.pop(owner, None)
            if index is not None:
                del self._used[index]

    @property
    def in_use(self) -> int:
        return len(self._used)
