"""Fork server for the kill test: import the heavy modules once, then fork one quantize run per request.

Protocol on stdin/stdout, one JSON line each: request = argv list; replies = {"pid": N} when the
child starts, then {"rc": int | None, "signal": int | None} when it ends. Children write to stderr
only. Forking a warm process lets the test spend its time on the AWQ work it kills, not on imports.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    import lmdeploy.lite.apis.auto_awq  # noqa: F401  (warm imports, no torch op runs in this process)
    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401

    from jobs import quantize

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.dup2(2, 1)
            try:
                rc = quantize.main(argv)
            except BaseException:  # noqa: BLE001  (report, never return into the server loop)
                import traceback

                traceback.print_exc()
                rc = 99
            os._exit(rc)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        reply = {
            "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        }
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
