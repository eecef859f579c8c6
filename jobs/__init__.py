"""Job entrypoints (fetch, quantize, verify, prepare_calibration): run as `python -m jobs.<name>`."""
