"""
The HTTP P2P API front-end (annex+http) and, later, the annex+http node
connector: shared/spec/p2phttp.md.
"""
