"""Exit codes shared by every kit command."""

OK = 0
FAILED = 1  # a check failed, the server errored, the job could not finish
USAGE = 2  # bad arguments or settings; nothing was started
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it
