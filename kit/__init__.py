"""lmdeploy-kit shared package: settings, rendering and small helpers used by jobs/ and clients/."""

__version__ = "0.1.0"
