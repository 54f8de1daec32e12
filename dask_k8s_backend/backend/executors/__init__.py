"""What happens to each executor pod once asked for: the lifecycle manager, failure accounting and the
logs kept after a pod is gone.
"""
