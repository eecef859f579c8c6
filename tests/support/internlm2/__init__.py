"""InternLM2 modeling code vendored from xtuner 0.2.0 (see README.md)."""
