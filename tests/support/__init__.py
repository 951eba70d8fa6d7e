"""
Shared test support code: fixtures that build real git-annex repositories.
"""
