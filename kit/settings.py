"""The one settings source: schema, profile merge and loading.

`settings.yaml` holds every knob once under `defaults:`; `profiles:` hold small overrides
that are deep-merged on top. Everything else (Ansible vars, kustomize params, jobs, clients)
reads the validated `Settings` object returned by `load_settings`.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS_PATH = REPO_ROOT / "settings.yaml"
DEFAULT_PROFILE = "default"

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_K8S_NAME_DOTS = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?$")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){1,3}([a-z0-9.+-]*)?$")


class SettingsError(Exception):
    """Settings that cannot be used; the message names the field, the value and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    name: str = Field("internlm2_5-1_8b-chat", min_length=1, description="Short name; used for directory names and the served model name.")
    source: str = Field(
        "internlm/internlm2_5-1_8b-chat",
        min_length=1,
        description="Where the fp16 weights come from: a Hugging Face id (`org/name`), `modelscope:org/name`, or an absolute local path.",
    )
    revision: str = Field("main", min_length=1, description="Hub revision (branch, tag or commit) pinned for the fetch.")
    trust_remote_code: bool = Field(True, description="Allow the model's own modeling code (InternLM2 needs it) in lite and serve.")

    @field_validator("name")
    @classmethod
    def _name_is_path_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("must be letters, digits, '.', '_' or '-' (it becomes a directory name)")
        return v

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty: give a Hugging Face id, modelscope:org/name or an absolute path")
        if v.startswith("/") or v.startswith("modelscope:"):
            return v
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", v):
            raise ValueError("must be a Hugging Face id 'org/name', 'modelscope:org/name' or an absolute local path")
        return v

    @property
    def hub(self) -> Literal["huggingface", "modelscope", "local"]:
        if self.source.startswith("/"):
            return "local"
        return "modelscope" if self.source.startswith("modelscope:") else "huggingface"

    @property
    def repo_id(self) -> str:
        return self.source.removeprefix("modelscope:")


class StorageSettings(_Section):
    models_root: str = Field("/models", description="Model store root: the PV mount in pods, a directory on Ansible hosts.")
    fp16_dir: str = Field("", description="fp16 model directory under models_root; empty = `<model.name>`.")
    quantized_dir: str = Field("", description="W4A16 output directory under models_root; empty = `<model.name>-w4a16-4bit`.")
    calibration_file: str = Field(
        "calibration/calib.txt", description="Calibration text under models_root (a shipped default is copied there when missing)."
    )

    @field_validator("models_root")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        return v.rstrip("/") or "/"

    @field_validator("fp16_dir", "quantized_dir", "calibration_file")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in PurePosixPath(v).parts:
            raise ValueError("must be a path relative to models_root, without '..'")
        return v


class QuantizationSettings(_Section):
    enabled: bool = Field(True, description="Run AWQ; false serves the fp16 model.")
    w_bits: Literal[4] = Field(4, description="Weight bits; lmdeploy AWQ (W4A16) supports 4.")
    w_group_size: Literal[32, 64, 128, 256] = Field(128, description="AWQ group size; TurboMind accepts only 128.")
    calib_samples: int = Field(128, ge=1, le=4096, description="Calibration samples.")
    calib_seqlen: int = Field(2048, ge=64, le=32768, description="Tokens per calibration sample.")
    batch_size: int = Field(1, ge=1, le=64, description="Calibration batch size.")
    search_scale: bool = Field(False, description="Grid-search AWQ scales (slower, sometimes better).")
    dtype: Literal["auto", "float16", "bfloat16"] = Field("auto", description="Compute dtype for AWQ.")
    device: Literal["cuda", "cpu"] = Field("cuda", description="Where AWQ runs.")
    calibration_dataset: str = Field(
        "wikitext2", description="`datasets` set that `prepare-calibration` turns into the calibration text when a network is there."
    )
    max_ppl_ratio: float = Field(1.25, gt=1.0, le=10.0, description="Quality gate: quantized/fp16 perplexity must stay at or under this.")


class ServingSettings(_Section):
    backend: Literal["turbomind", "pytorch"] = Field(
        "turbomind", description="Inference engine: TurboMind (fast AWQ) or the PyTorch fallback."
    )
    model_format: Literal["awq", "hf", None] = Field(
        None, description="`--model-format`; empty = derived (awq when quantization is enabled)."
    )
    quant_policy: Literal[0, 4, 8] = Field(8, description="KV-cache quantization: 0 off, 8 int8, 4 int4.")
    cache_max_entry_count: float = Field(0.8, gt=0.0, lt=1.0, description="Fraction of free GPU memory given to the KV cache (0 < x < 1).")
    session_len: int | None = Field(None, ge=256, le=1048576, description="Max tokens per session; empty = model default.")
    max_batch_size: int | None = Field(None, ge=1, le=4096, description="Max concurrent sequences; empty = lmdeploy's default for the GPU.")
    max_prefill_token_num: int | None = Field(
        None, ge=256, le=262144, description="Prompt tokens prefilled per engine step (`--max-prefill-token-num`); empty = lmdeploy's 8192."
    )
    port: int = Field(23333, ge=1024, le=65535, description="api_server port.")
    tp: int = Field(1, ge=1, le=8, description="Tensor parallelism (GPUs per replica).")
    tool_call_parser: Literal["internlm", "qwen", "llama3", "none"] = Field(
        "internlm", description="`--tool-call-parser`; none disables tool_calls."
    )
    api_key_secret: str = Field("lmdeploy-api-key", description="Secret holding the API key (key `api-key`).")
    hub_token_secret: str = Field("hf-token", description="Secret holding the hub token (key `token`).")
    replicas: int = Field(1, ge=0, le=64, description="Serving replicas (one GPU set each).")
    log_level: Literal["ERROR", "WARNING", "INFO", "DEBUG"] = Field("WARNING", description="api_server log level.")

    @field_validator("api_key_secret", "hub_token_secret")
    @classmethod
    def _k8s_name(cls, v: str) -> str:
        if not _K8S_NAME.fullmatch(v) or len(v) > 63:
            raise ValueError("must be a Kubernetes name (lowercase letters, digits, '-')")
        return v


class GradioSettings(_Section):
    port: int = Field(6006, ge=1024, le=65535, description="Gradio page port.")
    title: str = Field("lmdeploy chat", description="Page title.")


class ImageSettings(_Section):
    registry: str = Field("ghcr.io/example/lmdeploy-kit", description="Registry/namespace images are tagged for and pushed to.")
    kit_version: str = Field("0.1.0", description="Kit version in image tags.")
    cuda_base: str = Field("nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04", description="Runtime base image, an exact tag.")
    cuda_base_digest: str = Field("", description="Optional `sha256:...` digest for the runtime base; empty = tag only.")
    python_base: str = Field("python:3.11.11-slim-bookworm", description="Client base image, an exact tag.")
    python_base_digest: str = Field("", description="Optional `sha256:...` digest for the client base.")
    runtime_digest: str = Field("", description="Optional digest of the pushed runtime image, applied in manifests.")
    client_digest: str = Field("", description="Optional digest of the pushed client image, applied in manifests.")

    @field_validator("cuda_base", "python_base")
    @classmethod
    def _pinned(cls, v: str) -> str:
        tag = v.rsplit(":", 1)[1] if ":" in v.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            raise ValueError("must carry an exact tag (never 'latest')")
        return v

    @field_validator("cuda_base_digest", "python_base_digest", "runtime_digest", "client_digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if v and not re.fullmatch(r"sha256:[0-9a-f]{64}", v):
            raise ValueError("must be empty or 'sha256:' followed by 64 hex digits")
        return v


class VersionSettings(_Section):
    python: str = Field("3.11", description="Python of the conda env / venv and images.")
    torch: str = Field("2.8.0", description="torch pin.")
    lmdeploy: str = Field("0.18.0", description="lmdeploy pin.")
    transformers: str = Field("4.57.6", description="transformers pin (InternLM2 remote code needs <5).")
    cuda: str = Field("12.8", description="CUDA the torch wheel is built for (cu128 index).")

    @field_validator("python", "torch", "lmdeploy", "transformers", "cuda")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION.fullmatch(v):
            raise ValueError("must be a version like '0.18.0'")
        return v


class Toleration(_Section):
    """One pod toleration, as in the Pod spec (e.g. the `nvidia.com/gpu` taint of GPU node pools)."""

    key: str = Field("", description="Taint key; empty with operator Exists tolerates every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str = Field("", description="Taint value (operator Equal).")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = Field("", description="Taint effect; empty = all.")
    tolerationSeconds: int | None = Field(None, ge=0, description="NoExecute only: how long the pod stays bound.")  # noqa: N815

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


_AFFINITY_KEYS = {"nodeAffinity", "podAffinity", "podAntiAffinity"}


class KubernetesSettings(_Section):
    namespace: str = Field("lmdeploy", description="Namespace everything goes into.")
    storage_class: str = Field("", description="PVC storageClass; empty = cluster default.")
    pvc_size: str = Field("50Gi", description="Model store size.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        "ReadWriteOnce", description="RWX lets replicas on several nodes share the store."
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    gpu_model: str = Field(
        "", description="GPU model of the serving nodes (e.g. h100, h200) for `make plan`/`make deploy` memory checks; empty = skip them."
    )
    serve_cpu: str = Field("4", description="CPU request of a serving pod.")
    serve_memory: str = Field("32Gi", description="Memory request/limit of a serving pod.")
    shm_size: str = Field("8Gi", description="/dev/shm size (memory-backed emptyDir).")
    startup_timeout_s: int = Field(900, ge=60, le=7200, description="How long the startupProbe allows for model load.")
    quantize_deadline_s: int = Field(7200, ge=300, le=172800, description="activeDeadlineSeconds of the quantize Job.")
    image_pull_allowance_s: int = Field(
        600,
        ge=0,
        le=7200,
        description="Time for pulling the multi-GB runtime image, added to the startup budget for progressDeadlineSeconds.",
    )
    tolerations: list[Toleration] = Field(
        [], description="Tolerations of every pod that mounts the model store (fetch, quantize, serve), e.g. for tainted GPU nodes."
    )
    node_selector: dict[str, str] = Field({}, description="nodeSelector of every pod that mounts the model store.")
    affinity: dict[str, Any] = Field(
        {}, description="Pod `affinity` (nodeAffinity, podAffinity, podAntiAffinity) of every pod that mounts the model store."
    )
    runtime_class_name: str = Field(
        "", description="runtimeClassName of those pods: `nvidia` where containerd's default runtime is not NVIDIA's; empty = default."
    )
    priority_class_name: str = Field("", description="priorityClassName of those pods; empty = the cluster default.")
    hub_egress_cidrs: list[str] = Field(
        ["0.0.0.0/0"], min_length=1, description="Where the fetch Job may connect (the model hub or your proxy/mirror), as CIDRs."
    )
    hub_egress_ports: list[int] = Field([443], min_length=1, description="TCP ports the fetch Job may connect to on hub_egress_cidrs.")

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not _K8S_NAME.fullmatch(v) or len(v) > 63:
            raise ValueError("must be a Kubernetes name (lowercase letters, digits, '-', at most 63)")
        return v

    @field_validator("runtime_class_name", "priority_class_name")
    @classmethod
    def _optional_name(cls, v: str) -> str:
        if v and (not _K8S_NAME_DOTS.fullmatch(v) or len(v) > 253):
            raise ValueError("must be empty or a Kubernetes object name (lowercase letters, digits, '-', '.')")
        return v

    @field_validator("affinity")
    @classmethod
    def _affinity_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = set(v) - _AFFINITY_KEYS
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_AFFINITY_KEYS))}")
        return v

    @field_validator("hub_egress_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR like '0.0.0.0/0' or '10.0.0.0/8'") from None
        return v

    @field_validator("hub_egress_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        if any(not 1 <= p <= 65535 for p in v):
            raise ValueError("ports must be between 1 and 65535")
        return v

    @field_validator("pvc_size", "serve_cpu", "serve_memory", "shm_size")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY.fullmatch(v):
            raise ValueError("must be a Kubernetes quantity like '50Gi' or '4'")
        return v


class MonitoringSettings(_Section):
    """The optional `monitoring` overlay: Prometheus Operator ServiceMonitor + KEDA ScaledObject."""

    service_monitor_labels: dict[str, str] = Field(
        {"release": "kube-prometheus-stack"},
        description="Labels of the ServiceMonitor; Prometheus picks it by them (kube-prometheus-stack: `release: <helm release>`).",
    )
    prometheus_namespace: str = Field("monitoring", description="Namespace of Prometheus: it may scrape the API port.")
    prometheus_url: str = Field("http://prometheus-operated.monitoring.svc:9090", description="Prometheus URL KEDA queries.")
    min_replicas: int = Field(1, ge=1, le=64, description="KEDA minReplicaCount of the serving Deployment.")
    max_replicas: int = Field(
        1, ge=1, le=64, description="KEDA maxReplicaCount; above 1 needs kubernetes.access_mode ReadWriteMany (replicas on several nodes)."
    )
    queue_threshold: int = Field(4, ge=1, le=10000, description="Scale out when more requests than this wait per replica.")

    @field_validator("prometheus_namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not _K8S_NAME.fullmatch(v) or len(v) > 63:
            raise ValueError("must be a Kubernetes name (lowercase letters, digits, '-', at most 63)")
        return v

    @model_validator(mode="after")
    def _range(self) -> MonitoringSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"monitoring.min_replicas={self.min_replicas} is above monitoring.max_replicas={self.max_replicas}")
        return self


class ProvisionSettings(_Section):
    env_type: Literal["conda", "venv"] = Field("venv", description="Environment kind the python_env role builds.")
    env_prefix: str = Field("/opt/lmdeploy/env", description="Where the environment lives on the host.")
    conda_installer_url: str = Field(
        "https://github.com/conda-forge/miniforge/releases/download/25.3.1-0/Miniforge3-25.3.1-0-Linux-x86_64.sh",
        description="Miniforge installer (pinned release); point at a mirror offline.",
    )
    conda_installer_sha256: str = Field(
        "376b160ed8130820db0ab0f3826ac1fc85923647f75c1b8231166e3d559ab768", description="sha256 of the installer."
    )
    conda_channel: str = Field("", description="Conda channel mirror; empty = conda-forge.")
    pip_index_url: str = Field("", description="Private PyPI index; empty = pip's default.")
    torch_index_url: str = Field("https://download.pytorch.org/whl/cu128", description="Index serving the CUDA torch wheel.")
    wheelhouse: str = Field("", description="Offline mode: a directory of wheels on the host; pip then never goes online.")
    require_gpu: bool = Field(False, description="Fail provisioning on a host without an NVIDIA GPU.")
    service_user: str = Field("lmdeploy", description="System user that owns the model store and runs the services.")
    systemd_services: bool = Field(False, description="Install systemd units for api_server and Gradio (hosts without Kubernetes).")


class Settings(_Section):
    profile: str = Field(DEFAULT_PROFILE, description="Name of the profile these values came from.")
    model: ModelSettings = ModelSettings()
    storage: StorageSettings = StorageSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    serving: ServingSettings = ServingSettings()
    gradio: GradioSettings = GradioSettings()
    images: ImageSettings = ImageSettings()
    versions: VersionSettings = VersionSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    provision: ProvisionSettings = ProvisionSettings()

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        s, q = self.serving, self.quantization
        if s.backend == "turbomind" and q.enabled and q.w_group_size != 128:
            raise ValueError(
                f"quantization.w_group_size={q.w_group_size} cannot be served by serving.backend=turbomind; "
                "allowed: 128 (or use serving.backend=pytorch)"
            )
        if s.model_format == "awq" and not q.enabled:
            raise ValueError("serving.model_format=awq needs quantization.enabled=true; allowed: hf or empty")
        if s.backend == "pytorch" and s.model_format == "hf":
            raise ValueError("serving.model_format=hf is rejected by the pytorch backend; allowed: empty or awq")
        if s.port == self.gradio.port:
            raise ValueError(f"serving.port and gradio.port are both {s.port}; they must differ")
        m, k = self.monitoring, self.kubernetes
        if m.max_replicas > 1 and k.access_mode != "ReadWriteMany":
            raise ValueError(
                f"monitoring.max_replicas={m.max_replicas} needs kubernetes.access_mode=ReadWriteMany: replicas on other nodes "
                f"cannot mount a {k.access_mode} model store (Multi-Attach); set max_replicas: 1 or a ReadWriteMany storage_class"
            )
        return self

    # Derived values every consumer uses (never recomputed elsewhere).
    @property
    def fp16_path(self) -> str:
        return f"{self.storage.models_root}/{self.storage.fp16_dir or self.model.name}"

    @property
    def quantized_path(self) -> str:
        return f"{self.storage.models_root}/{self.storage.quantized_dir or self.model.name + '-w4a16-4bit'}"

    @property
    def serve_path(self) -> str:
        return self.quantized_path if self.quantization.enabled else self.fp16_path

    @property
    def calibration_path(self) -> str:
        return f"{self.storage.models_root}/{self.storage.calibration_file}"

    @property
    def effective_model_format(self) -> str | None:
        if self.serving.model_format:
            return self.serving.model_format
        return "awq" if self.quantization.enabled else None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid settings ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against settings.yaml"
        else:
            msg = msg.replace("Input should be", "allowed:").replace("String should have", "allowed:")
        if not e["loc"]:
            lines.append(f"  {msg}")
            continue
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {loc} = {shown}: not allowed; {msg}" if not msg.startswith("unknown") else f"  {loc} = {shown}: {msg}")
    return "\n".join(lines)


def read_raw(path: Path | None = None) -> dict[str, Any]:
    path = Path(path or os.environ.get("KIT_SETTINGS") or DEFAULT_SETTINGS_PATH)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"settings file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("defaults", {}), dict):
        raise SettingsError(f"settings file {path} must be a mapping with 'defaults:' and 'profiles:'")
    unknown = set(data) - {"defaults", "profiles"}
    if unknown:
        raise SettingsError(f"settings file {path}: unknown top-level key(s) {sorted(unknown)}; allowed: defaults, profiles")
    return data


def profile_names(path: Path | None = None) -> list[str]:
    return [DEFAULT_PROFILE, *sorted(p for p in (read_raw(path).get("profiles") or {}) if p != DEFAULT_PROFILE)]


def load_settings(profile: str | None = None, path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Validated settings for a profile (`PROFILE` env, else `default`), with optional overrides."""
    data = read_raw(path)
    profile = profile or os.environ.get("PROFILE") or DEFAULT_PROFILE
    profiles = data.get("profiles") or {}
    if profile != DEFAULT_PROFILE and profile not in profiles:
        raise SettingsError(f"unknown profile {profile!r}; allowed: {', '.join(profile_names(path))}")
    merged = deep_merge(data.get("defaults") or {}, profiles.get(profile) or {})
    merged = deep_merge(merged, overrides or {})
    merged["profile"] = profile
    try:
        return Settings.model_validate(merged)
    except ValidationError as err:
        raise SettingsError(_format_error(err, f"profile {profile}")) from None


def parse_override(item: str) -> dict[str, Any]:
    """`serving.quant_policy=4` -> {"serving": {"quant_policy": 4}} (value parsed as YAML)."""
    if "=" not in item:
        raise SettingsError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out
