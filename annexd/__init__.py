"""
annexd: a gateway for git-annex clusters.
"""
