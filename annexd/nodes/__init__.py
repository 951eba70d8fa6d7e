"""
Node connectors: the repositories behind the gateway.
"""
