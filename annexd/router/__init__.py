"""
The cluster router: which repository a session's target uuid names, and the
cluster fan-out.
"""
