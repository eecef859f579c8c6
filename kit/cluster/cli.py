"""`python -m kit.cluster`: deploy the kit's kustomize overlay and look after it.

  deploy     plan check, cluster + GPU checks, then the steps of kit.deploy_plan.deploy_steps: the
             namespace (only when absent), the Secret check, config + PVC, the fetch and quantize Jobs
             (each only when its completion marker on the PVC does not match the settings; read
             without a GPU), the serving Deployment, Gradio; every wait reads pods, events and PVCs
             and stops early on a problem that will not fix itself; prints the endpoint
  undeploy   delete what deploy created; the model PVC (and the namespace) stay unless --delete-pvc
  status     pods, Jobs, Services/endpoints, recent events, GPU memory per serving pod
  logs       tail the serving (or --component) pods' logs
  gpu        run the kit's GPU reporter (`python -m clients.gpu_report --json`) in each serving pod

Environment: PROFILE (settings profile), KIT_SETTINGS (settings file), KUBECONFIG (kubectl's),
KIT_KUBE_CONTEXT (= --context), KIT_KUBE_NAMESPACE (= --namespace), KIT_KUBECTL (kubectl binary;
default: the kit environment's own kubectl, never the one on PATH).

Exit codes: 0 ok, 1 a check or the deployment failed, 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import os
import sys

from kit.cluster.deploy import cmd_deploy, cmd_undeploy
from kit.cluster.kubectl import Kubectl
from kit.cluster.status import cmd_gpu, cmd_logs, cmd_status
from kit.entry import add_settings_options, run, settings_from
from kit.logs import add_verbosity


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kit.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--context", default=os.environ.get("KIT_KUBE_CONTEXT") or None, help="kubeconfig context (env KIT_KUBE_CONTEXT)")
    parser.add_argument(
        "--namespace", default=os.environ.get("KIT_KUBE_NAMESPACE") or None, help="namespace (env KIT_KUBE_NAMESPACE; default: settings)"
    )
    add_settings_options(parser, overrides=False, verbosity=False)
    parser.add_argument("--overlay", help="overlay name under k8s/overlays or a path (default: the profile's)")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("deploy", help="check, apply, wait for the Jobs and the rollout")
    p.add_argument("--skip-plan", action="store_true", help="deploy even when the capacity plan finds a blocking error")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the serving rollout")
    p.add_argument("--skip-gpu-check", action="store_true", help="do not read the nodes' GPUs (a user limited to one namespace)")
    p.add_argument(
        "--scale-down",
        action="store_true",
        help="when quantize needs the GPU the running server holds, scale the server to 0 first (downtime) instead of stopping",
    )
    p.add_argument("--force-jobs", action="store_true", help="run the fetch and quantize Jobs even when their markers are current")
    p.add_argument(
        "--overlay", default=argparse.SUPPRESS, help="as the global --overlay (so `make deploy ARGS=--overlay=monitoring` works)"
    )
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("undeploy", help="delete the deployment (keeps the model PVC)")
    p.add_argument("--delete-pvc", action="store_true", help="also delete the model store PVC (the downloaded and quantized model)")
    p.add_argument("--overlay", default=argparse.SUPPRESS, help="as the global --overlay")
    p.set_defaults(func=cmd_undeploy)
    p = sub.add_parser("status", help="pods, Jobs, endpoints, events, GPU memory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("logs", help="tail pod logs")
    p.add_argument("--component", default="serve", choices=["serve", "gradio", "fetch", "quantize"])
    p.add_argument("--tail", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("gpu", help="GPU usage of the serving pods (kubectl exec of the GPU reporter)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gpu)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), lambda args: args.func(args, settings_from(args), Kubectl(context=args.context)), argv)


if __name__ == "__main__":
    sys.exit(main())
