"""
The git-annex P2P protocol: message codec, keys, framing, client and server sessions.
"""
