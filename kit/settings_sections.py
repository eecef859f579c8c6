"""The sections of settings.yaml as pydantic models: one class per top-level key, each field with its
default, its allowed values and the description the README's settings table shows.

kit/settings.py puts them together into `Settings` and loads the file; import them from there.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


def _matching(pattern: str, message: str, max_len: int = 0) -> AfterValidator:
    """A check of a string field: the whole value matches `pattern` (and is at most `max_len` long)."""
    regex = re.compile(pattern)

    def check(v: str) -> str:
        if not regex.fullmatch(v) or (max_len and len(v) > max_len):
            raise ValueError(message)
        return v

    return AfterValidator(check)


K8sName = Annotated[
    str, _matching(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", "must be a Kubernetes name (lowercase letters, digits, '-', at most 63)", 63)
]
OptionalObjectName = Annotated[
    str,
    _matching(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?", "must be empty or a Kubernetes object name (lowercase letters, digits, '-', '.')", 253),
]
Quantity = Annotated[str, _matching(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?", "must be a Kubernetes quantity like '50Gi' or '4'")]
Version = Annotated[str, _matching(r"[0-9]+(\.[0-9]+){1,3}([a-z0-9.+-]*)?", "must be a version like '0.18.0'")]
Digest = Annotated[str, _matching(r"(sha256:[0-9a-f]{64})?", "must be empty or 'sha256:' followed by 64 hex digits")]


class Section(BaseModel):
    """A settings.yaml section: unknown keys are errors, and so are bad values assigned later."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
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


class StorageSettings(Section):
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


class QuantizationSettings(Section):
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


class ServingSettings(Section):
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
    enable_metrics: bool = Field(
        True, description="lmdeploy's Prometheus `/metrics` (the monitoring overlay scrapes it); false renders `--disable-metrics`."
    )
    port: int = Field(23333, ge=1024, le=65535, description="api_server port.")
    tp: int = Field(1, ge=1, le=8, description="Tensor parallelism (GPUs per replica).")
    tool_call_parser: Literal["internlm", "qwen", "llama3", "none"] = Field(
        "internlm", description="`--tool-call-parser`; none disables tool_calls."
    )
    api_key_secret: K8sName = Field("lmdeploy-api-key", description="Secret holding the API key (key `api-key`).")
    hub_token_secret: K8sName = Field("hf-token", description="Secret holding the hub token (key `token`).")
    replicas: int = Field(1, ge=0, le=64, description="Serving replicas (one GPU set each).")
    log_level: Literal["ERROR", "WARNING", "INFO", "DEBUG"] = Field("WARNING", description="api_server log level.")


class GradioSettings(Section):
    port: int = Field(6006, ge=1024, le=65535, description="Gradio page port.")
    title: str = Field("lmdeploy chat", description="Page title.")


class ImageSettings(Section):
    registry: str = Field("ghcr.io/example/lmdeploy-kit", description="Registry/namespace images are tagged for and pushed to.")
    kit_version: str = Field("0.1.0", description="Kit version in image tags.")
    cuda_base: str = Field("nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04", description="Runtime base image, an exact tag.")
    cuda_base_digest: Digest = Field("", description="Optional `sha256:...` digest for the runtime base; empty = tag only.")
    python_base: str = Field("python:3.11.11-slim-bookworm", description="Client base image, an exact tag.")
    python_base_digest: Digest = Field("", description="Optional `sha256:...` digest for the client base.")
    runtime_digest: Digest = Field("", description="Optional digest of the pushed runtime image, applied in manifests.")
    client_digest: Digest = Field("", description="Optional digest of the pushed client image, applied in manifests.")

    @field_validator("cuda_base", "python_base")
    @classmethod
    def _pinned(cls, v: str) -> str:
        tag = v.rsplit(":", 1)[1] if ":" in v.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            raise ValueError("must carry an exact tag (never 'latest')")
        return v


class VersionSettings(Section):
    python: Version = Field("3.11", description="Python of the conda env / venv and images.")
    torch: Version = Field("2.8.0", description="torch pin.")
    lmdeploy: Version = Field("0.18.0", description="lmdeploy pin.")
    transformers: Version = Field("4.57.6", description="transformers pin (InternLM2 remote code needs <5).")
    cuda: Version = Field("12.8", description="CUDA the torch wheel is built for (cu128 index).")


class Toleration(Section):
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


class KubernetesSettings(Section):
    namespace: K8sName = Field("lmdeploy", description="Namespace everything goes into.")
    storage_class: str = Field("", description="PVC storageClass; empty = cluster default.")
    pvc_size: Quantity = Field("50Gi", description="Model store size.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        "ReadWriteOnce", description="RWX lets replicas on several nodes share the store."
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    gpu_model: str = Field(
        "", description="GPU model of the serving nodes (e.g. h100, h200) for `make plan`/`make deploy` memory checks; empty = skip them."
    )
    serve_cpu: Quantity = Field("4", description="CPU request of a serving pod.")
    serve_memory: Quantity = Field("32Gi", description="Memory request/limit of a serving pod.")
    shm_size: Quantity = Field("8Gi", description="/dev/shm size (memory-backed emptyDir).")
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
    runtime_class_name: OptionalObjectName = Field(
        "", description="runtimeClassName of those pods: `nvidia` where containerd's default runtime is not NVIDIA's; empty = default."
    )
    priority_class_name: OptionalObjectName = Field("", description="priorityClassName of those pods; empty = the cluster default.")
    hub_egress_cidrs: list[str] = Field(
        ["0.0.0.0/0"], min_length=1, description="Where the fetch Job may connect (the model hub or your proxy/mirror), as CIDRs."
    )
    hub_egress_ports: list[int] = Field([443], min_length=1, description="TCP ports the fetch Job may connect to on hub_egress_cidrs.")

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


class MonitoringSettings(Section):
    """The optional `monitoring` overlay: Prometheus Operator ServiceMonitor + KEDA ScaledObject."""

    service_monitor_labels: dict[str, str] = Field(
        {"release": "kube-prometheus-stack"},
        description="Labels of the ServiceMonitor; Prometheus picks it by them (kube-prometheus-stack: `release: <helm release>`).",
    )
    prometheus_namespace: K8sName = Field("monitoring", description="Namespace of Prometheus: it may scrape the API port.")
    prometheus_url: str = Field("http://prometheus-operated.monitoring.svc:9090", description="Prometheus URL KEDA queries.")
    min_replicas: int = Field(1, ge=1, le=64, description="KEDA minReplicaCount of the serving Deployment.")
    max_replicas: int = Field(
        1, ge=1, le=64, description="KEDA maxReplicaCount; above 1 needs kubernetes.access_mode ReadWriteMany (replicas on several nodes)."
    )
    queue_threshold: int = Field(4, ge=1, le=10000, description="Scale out when more requests than this wait per replica.")

    @model_validator(mode="after")
    def _range(self) -> MonitoringSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"monitoring.min_replicas={self.min_replicas} is above monitoring.max_replicas={self.max_replicas}")
        return self


class ProvisionSettings(Section):
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
