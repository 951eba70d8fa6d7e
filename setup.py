# Kept so that `pip install -e .` works with older pips; all metadata is in setup.cfg.
from setuptools import setup

setup()
