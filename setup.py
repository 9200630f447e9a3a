"""Packages for setuptools: the `tvmsqz*` packages plus the shipped data as package data.

The repository keeps `targets/` and `schedules/` at its top level (the project layout); a wheel
carries them as `tvmsqz/_data/targets` and `tvmsqz/_data/schedules`, where `tvmsqz.paths` finds
them with `importlib.resources`. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

DATA = {"tvmsqz._data.targets": "targets", "tvmsqz._data.schedules": "schedules"}

setup(packages=find_packages(include=["tvmsqz", "tvmsqz.*"]) + list(DATA), package_dir=DATA)
