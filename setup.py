"""For Dataflow workers (`--setup_file ./setup.py`); metadata lives in pyproject.toml."""

from setuptools import setup

setup()
