"""The decisions of `kit.cluster deploy` (kit/deploy_plan/steps.py), importable as `kit.deploy_plan`."""

from kit.deploy_plan.steps import *  # noqa: F403
from kit.deploy_plan.steps import _kind_name  # noqa: F401
