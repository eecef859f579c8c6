"""A container's environment and `$(VAR)` expansion, as the kubelet computes them.

Kubernetes (k8s.io/kubernetes third_party/forked/golang/expansion): `$(NAME)` becomes the value
of NAME when NAME is defined, else stays `$(NAME)` literally; `$$` is an escaped `$` (so
`$$(NAME)` gives `$(NAME)`); any other `$` and an unclosed `$(` stay as they are. `env` values
may refer to variables defined before them (envFrom first, then env in order); command and args
are expanded against the finished environment. The image's own ENV is not visible to expansion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

OPERATOR = "$"
OPENER = "("
CLOSER = ")"


class EnvError(Exception):
    """A reference the kubelet would refuse (missing ConfigMap/Secret or key); one line."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion of one string."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == OPERATOR and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_name(text[cursor + 1 :])
            out.append((env[read] if read in env else f"$({read})") if is_var else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def _read_name(rest: str) -> tuple[str, bool, int]:
    """(text read, is a variable name, characters consumed after the operator)."""
    if rest[0] == OPERATOR:
        return OPERATOR, False, 1
    if rest[0] == OPENER:
        end = rest.find(CLOSER, 1)
        if end != -1:
            return rest[1:end], True, end + 1
        return OPERATOR + OPENER, False, 1
    return OPERATOR + rest[0], False, 1


Lookup = Callable[[str, str, bool], "str | None"]


def container_env(container: dict[str, Any], config_maps: Mapping[str, Mapping[str, str]], secret: Lookup) -> dict[str, str]:
    """The environment the kubelet gives a container (envFrom, then env in order, each value expanded).

    `config_maps` maps ConfigMap name -> data; `secret(name, key, optional)` returns a Secret value
    or None (optional and missing). Missing required sources raise EnvError, as the kubelet refuses
    to start such a container (CreateContainerConfigError).
    """
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref = src["configMapRef"]
            data = config_maps.get(ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f"envFrom: ConfigMap {ref['name']} is not among the rendered objects")
            env.update({prefix + k: str(v) for k, v in data.items()})
        elif "secretRef" in src:
            raise EnvError("envFrom secretRef is not supported by the rehearsal; use env valueFrom.secretKeyRef")
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        ref = item.get("valueFrom") or {}
        if "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            value = secret(r["name"], r["key"], bool(r.get("optional")))
        elif "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            data = config_maps.get(r["name"]) or {}
            value = data.get(r["key"])
            if value is None and not r.get("optional"):
                raise EnvError(f"env {name}: ConfigMap {r['name']} has no key {r['key']}")
        elif "fieldRef" in ref or "resourceFieldRef" in ref:
            value = None  # downward API: nothing to rehearse locally
        elif not ref:
            value = ""
        else:
            raise EnvError(f"env {name}: valueFrom {sorted(ref)} is not supported by the rehearsal")
        if value is not None:
            env[name] = value
    return env
