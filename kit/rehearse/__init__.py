"""Pod rehearsal: run the rendered overlay's pods as local processes (`python -m kit.rehearse`)."""
