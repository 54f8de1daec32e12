"""The process runtime: pods' containers as local processes, their environment and command line,
the sandbox hook, the warm fork server and parent-death handling.
"""
