"""Clients of the served model: chat, Gradio page, function-call check, GPU report."""
