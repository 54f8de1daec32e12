"""The backend's picture of Kubernetes: pod snapshots and the watch or polling sources that feed
them, and the nodes' allocatable resources.
"""
