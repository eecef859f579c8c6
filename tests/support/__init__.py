"""Helpers shared by the test suites and the GPU benchmark (tiny model builders)."""
