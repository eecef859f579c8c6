"""What a kit image gives its containers, read from images/<name>/Dockerfile.

The final stage's ENTRYPOINT, CMD (exec or shell form), ENV (inherited through `FROM <stage>`),
WORKDIR and USER. Kubernetes combines them with a container's command/args:

    neither        ENTRYPOINT + CMD
    command only   command            (the image's CMD is dropped too)
    args only      ENTRYPOINT + args
    both           command + args
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# PATH of the Debian/Ubuntu bases before the Dockerfile extends it.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(Exception):
    """The image a container names cannot be read; one line."""


@dataclass
class ImageConfig:
    name: str
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str | None = None
    # /etc/passwd lines the image's RUN useradd adds (getpwuid of the image's user must work).
    passwd: list[str] = field(default_factory=list)


def image_name(ref: str) -> str:
    """`ghcr.io/example/lmdeploy-kit/runtime:0.1.0@sha256:..` -> `runtime` (the images/ folder)."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, rest) per instruction; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        key, _, rest = buf.strip().partition(" ")
        out.append((key.upper(), rest.strip()))
        buf = ""
    return out


def _form(rest: str) -> list[str]:
    """Exec form (JSON array) as is; shell form runs under /bin/sh -c."""
    if rest.startswith("["):
        return [str(x) for x in json.loads(rest)]
    return ["/bin/sh", "-c", rest]


_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _env_pairs(rest: str, env: dict[str, str]) -> dict[str, str]:
    """`ENV A=1 B="x y"` or the legacy `ENV A 1`; $VAR / ${VAR} expanded against earlier ENV."""
    tokens = shlex.split(rest)
    if tokens and "=" not in tokens[0]:
        pairs = [(tokens[0], " ".join(tokens[1:]))]
    else:
        pairs = [tuple(t.split("=", 1)) for t in tokens]
    out = dict(env)
    for key, value in pairs:
        out[key] = _VAR.sub(lambda m: out.get(m.group(1) or m.group(2), ""), value)
    return out


_USERADD = re.compile(r"useradd\s+([^;&|]*)")


def _useradd(run: str) -> list[str]:
    """`useradd --uid 10001 --gid 0 --home-dir /home/x ... NAME` -> a passwd line."""
    out = []
    for m in _USERADD.finditer(run):
        words = shlex.split(m.group(1))
        opts = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        if "--uid" in opts:
            home = opts.get("--home-dir", "/")
            out.append(f"{words[-1]}:x:{opts['--uid']}:{opts.get('--gid', opts['--uid'])}::{home}:{opts.get('--shell', '/bin/sh')}")
    return out


def read_image(images_dir: Path, ref: str) -> ImageConfig:
    name = image_name(ref)
    path = images_dir / name / "Dockerfile"
    if not path.is_file():
        raise ImageError(f"image {ref}: no Dockerfile at {path} (the rehearsal runs the kit's own images only)")
    stages: dict[str, ImageConfig] = {}
    cur: ImageConfig | None = None
    for key, rest in _instructions(path.read_text()):
        if key == "FROM":
            parts = rest.split()
            parent = stages.get(parts[0])
            cur = ImageConfig(name=name, env={"PATH": BASE_PATH})
            if parent is not None:
                cur = ImageConfig(
                    name, list(parent.entrypoint), list(parent.cmd), dict(parent.env), parent.workdir, parent.user, list(parent.passwd)
                )
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages[parts[2]] = cur
        elif cur is None:
            continue
        elif key == "ENV":
            cur.env = _env_pairs(rest, cur.env)
        elif key == "ENTRYPOINT":
            cur.entrypoint = _form(rest)
            cur.cmd = []
        elif key == "CMD":
            cur.cmd = _form(rest)
        elif key == "WORKDIR":
            cur.workdir = rest if rest.startswith("/") else f"{cur.workdir.rstrip('/')}/{rest}"
        elif key == "USER":
            cur.user = rest
        elif key == "RUN" and "useradd" in rest:
            cur.passwd += _useradd(rest)
    if cur is None:
        raise ImageError(f"{path} has no FROM")
    return cur


def container_argv(image: ImageConfig, container: dict[str, Any]) -> list[str]:
    command = container.get("command")
    args = container.get("args")
    if command:
        return [*command, *(args or [])]
    return [*image.entrypoint, *(args if args is not None else image.cmd)]
