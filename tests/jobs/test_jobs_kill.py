"""SIGKILL the quantize job at seeded random points; every re-run must publish a complete model."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs._common import MARKER_NAME
from jobs.quantize import output_complete
from tests.jobs._helpers import REPO, settings_args

KILLS = 10
SEED = 20240601


class ForkRunner:
    def __init__(self, log: Path) -> None:
        self.log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.jobs._forkrunner"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert json.loads(self._read())["ready"]

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "fork runner died; see its log"
        return line

    def run(self, argv: list[str], kill_after: float | None = None) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._read())["pid"]
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return json.loads(self._read())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def _state(root: Path, out: Path) -> dict:
    """What a reader would find now; a marker must never sit beside incomplete files."""
    marker = out / MARKER_NAME
    state = {
        "tmp": bool(list(root.glob(f".{out.name}.tmp-*"))),
        "old": bool(list(root.glob(f".{out.name}.old-*"))),
        "out": out.exists(),
        "marker": marker.exists(),
    }
    if state["marker"]:
        data = json.loads(marker.read_text())
        assert output_complete(out, data), f"marker beside incomplete files in {out}"
        state["fingerprint"] = data["fingerprint"]
    return state


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_publishes_a_complete_model(store: Path, tmp_path: Path) -> None:
    args = settings_args(store)
    out = store / "tiny-w4a16-4bit"
    runner = ForkRunner(tmp_path / "runner.log")
    try:
        t0 = time.monotonic()
        assert runner.run(args) == {"rc": 0, "signal": None}
        duration = time.monotonic() - t0
        expected = json.loads((out / MARKER_NAME).read_text())["fingerprint"]

        rng = random.Random(SEED)
        kills, seen_mid_write, iterations = 0, 0, 0
        while kills < KILLS and iterations < 3 * KILLS:
            iterations += 1
            replace = iterations % 2 == 0
            if not replace:
                shutil.rmtree(out)  # fresh output; odd/even alternate with replacing a finished one
            delay = rng.uniform(0.0, duration)
            result = runner.run([*args, "--force"] if replace else args, kill_after=delay)
            after_kill = _state(store, out)
            if result["signal"] == signal.SIGKILL:
                kills += 1
                seen_mid_write += after_kill["tmp"]
            else:
                assert result["rc"] == 0, result
            if after_kill["marker"]:
                assert after_kill["fingerprint"] == expected

            assert runner.run(args) == {"rc": 0, "signal": None}
            final = _state(store, out)
            assert final["marker"] and final["fingerprint"] == expected
            assert not final["tmp"] and not final["old"], final
            from safetensors import safe_open

            with safe_open(str(out / "model.safetensors"), "pt") as f:
                assert any(k.endswith(".qweight") for k in f.keys())
        assert kills >= KILLS, f"only {kills} kills landed in {iterations} runs"
        assert seen_mid_write >= 1, "no kill hit the job while it was writing; the delays do not cover the work"
    finally:
        runner.close()
