"""Beside the Dask scheduler: the scheduler plugin (:mod:`.plugin`) and what it wires (:mod:`.components`):
the backend's view of the pods (:mod:`.observation`), the allocation of executors (:mod:`.allocation`),
their lifecycle (:mod:`.executors`), the app's heartbeat, metrics and the retirement gatekeeper.
"""
