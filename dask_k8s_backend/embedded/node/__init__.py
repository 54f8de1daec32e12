"""The only kubelet: what both runtimes share (:mod:`.kubelet_base`, the :mod:`.transport` seam and
its in-process :mod:`.store_transport`, pod IPs), the simulated runtime, the process runtime
(:mod:`.process`) and the node agent that joins any API server over HTTP (:mod:`.agent`).
"""
