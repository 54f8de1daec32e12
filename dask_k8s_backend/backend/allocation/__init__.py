"""Deciding how many executor pods to ask for: the allocator (Spark's ExecutorPodsAllocator), its
autoscaling rules and stabilization window, worker groups and the tasks stranded by a stopped group.
"""
