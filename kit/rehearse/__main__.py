"""`python -m kit.rehearse`: the pod rehearsal's command line (kit.rehearse.cli; see its --help).

The rehearsal's parts: cli (options), inputs (rendered objects, settings, secrets, isolation),
rehearsal (deploy order, the orchestration), job_steps and serve_step (the pods it runs), findings
(Secret values in argv), kubelet (one pod's lifecycle). The names this module used to define stay
importable from here.
"""

from __future__ import annotations

import sys

from kit.rehearse.cli import UNTIL, build_parser, main
from kit.rehearse.findings import MIN_SECRET_LEN, CmdlineWatch
from kit.rehearse.inputs import (
    UsageError,
    choose_isolation,
    config_maps,
    has_gpu,
    load_secrets,
    pvc_mount_path,
    render,
    rendered_settings,
    settings_map,
)
from kit.rehearse.rehearsal import CPU_AWQ, SOURCE_DIR, Rehearsal, deploy_order
from kit.rehearse.serve_step import NEEDS_GPU, NeedsGpu, needs_gpu

__all__ = [
    "CPU_AWQ",
    "MIN_SECRET_LEN",
    "NEEDS_GPU",
    "SOURCE_DIR",
    "UNTIL",
    "CmdlineWatch",
    "NeedsGpu",
    "Rehearsal",
    "UsageError",
    "build_parser",
    "choose_isolation",
    "config_maps",
    "deploy_order",
    "has_gpu",
    "load_secrets",
    "main",
    "needs_gpu",
    "pvc_mount_path",
    "render",
    "rendered_settings",
    "settings_map",
]

if __name__ == "__main__":
    sys.exit(main())
