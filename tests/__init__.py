"""
Tests for annexd.
"""
