"""Identity of one Dask cluster's pods: the app id every pod, Secret and Lease of the cluster is labelled with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AppSpec:
    """Identity of one Dask cluster's pods: every pod carries the app id label."""

    app_id: str  # unique per cluster, label value
    app_name: str  # human name; pod name prefix derived from it
    namespace: str
