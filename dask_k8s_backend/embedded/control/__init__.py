"""The embedded control plane: the scheduler that binds pods to nodes and its predicates.
"""
