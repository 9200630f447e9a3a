"""The package version, in a leaf module: everything that records it (manifests, bench JSON,
bundles) imports it from here, so nothing imports the package root (which exposes the API)."""

__version__ = "0.6.0"
