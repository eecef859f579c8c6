"""A pod's volumes as host folders, and each container's volumeMounts resolved against them.

The PVC is one host folder shared by every pod (the model store); each emptyDir a fresh folder per
pod; configMap and Secret volumes are written out as files (items, defaultMode); fsGroup changes the
group of the store and Secret volumes as the kubelet does (root only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kit.rehearse.host import Host, Mount, PodFailed


def _write_files(folder: Path, data: Mapping[str, str], items: list[dict[str, Any]] | None, mode: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, rel in wanted.items():
        if key not in data:
            raise PodFailed(f"{what} has no key {key!r} (CreateContainerConfigError: the pod cannot start)")
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(data[key]))
        path.chmod(mode)


def _fs_group(path: Path, gid: int) -> None:
    """fsGroup: the volume's group becomes gid, group-writable, setgid folders (kubelet's ownership change)."""
    for p in [path, *path.rglob("*")]:
        if p.is_symlink():
            continue
        os.chown(p, -1, gid)
        mode = p.stat().st_mode
        p.chmod(mode | 0o060 | (0o2010 if p.is_dir() else 0))


def pod_volumes(host: Host, spec: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
    """Volume name -> host folder for one pod."""
    out: dict[str, Path] = {}
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    for vol in spec.get("volumes") or []:
        name = vol["name"]
        folder = pod_dir / "volumes" / name
        if "persistentVolumeClaim" in vol:
            out[name] = host.store
            if fs_group is not None and os.geteuid() == 0:
                _fs_group(host.store, int(fs_group))
            continue
        if "emptyDir" in vol:
            folder.mkdir(parents=True)
            folder.chmod(0o777)
        elif "configMap" in vol:
            ref = vol["configMap"]
            data = host.config_maps.get(ref["name"])
            if data is None:
                raise PodFailed(f"volume {name}: ConfigMap {ref['name']} is not among the rendered objects")
            _write_files(folder, data, ref.get("items"), ref.get("defaultMode", 0o644), f"volume {name}: ConfigMap {ref['name']}")
        elif "secret" in vol:
            ref = vol["secret"]
            data = host.secrets.get(ref["secretName"])
            if data is None and not ref.get("optional"):
                raise PodFailed(f"volume {name}: Secret {ref['secretName']} is not in the secrets file")
            _write_files(folder, data or {}, ref.get("items"), ref.get("defaultMode", 0o644), f"volume {name}: Secret {ref['secretName']}")
            if fs_group is not None and os.geteuid() == 0:
                _fs_group(folder, int(fs_group))
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise PodFailed(f"volume {name}: type {kinds} is not supported by the rehearsal")
        out[name] = folder
    return out


def container_mounts(container: dict[str, Any], volumes: Mapping[str, Path]) -> list[Mount]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volumes:
            raise PodFailed(f"container {container['name']}: volumeMount {vm['name']} has no volume in the pod", container["name"])
        source = volumes[vm["name"]]
        if vm.get("subPath"):
            source = source / vm["subPath"]
            if not source.exists():
                source.mkdir(parents=True)
        mounts.append(Mount(vm["mountPath"], source, bool(vm.get("readOnly"))))
    return mounts
