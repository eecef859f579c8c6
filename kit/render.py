"""The one rendering path: settings -> command lines and flat parameters.

Every consumer (Deployment args, systemd unit, benchmark, jobs, clients) takes its
lmdeploy command line or its values from here, never retyping a flag.
"""

from __future__ import annotations

from typing import Any

from kit.settings import Settings

API_KEY_ENV = "LMDEPLOY_API_KEY"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def serve_args(s: Settings, model_path: str | None = None, api_key: str | None = None) -> list[str]:
    """`lmdeploy serve api_server ...` for these settings.

    `api_key` is appended as `--api-keys VALUE`; manifests pass `$(LMDEPLOY_API_KEY)` so the
    kubelet substitutes it from the Secret-backed env var.
    """
    sv = s.serving
    args = [
        "lmdeploy",
        "serve",
        "api_server",
        model_path or s.serve_path,
        "--server-name",
        "0.0.0.0",
        "--server-port",
        str(sv.port),
        "--backend",
        sv.backend,
        "--model-name",
        s.model.name,
        "--quant-policy",
        str(sv.quant_policy),
        "--cache-max-entry-count",
        _fmt(sv.cache_max_entry_count),
        "--tp",
        str(sv.tp),
        "--log-level",
        sv.log_level,
    ]
    fmt = s.effective_model_format
    if fmt and not (sv.backend == "pytorch" and fmt == "hf"):
        args += ["--model-format", fmt]
    if sv.tool_call_parser != "none":
        args += ["--tool-call-parser", sv.tool_call_parser]
    if sv.session_len:
        args += ["--session-len", str(sv.session_len)]
    if sv.max_batch_size:
        args += ["--max-batch-size", str(sv.max_batch_size)]
    if s.model.trust_remote_code:
        args.append("--trust-remote-code")
    if api_key:
        args += ["--api-keys", api_key]
    return args


def auto_awq_args(s: Settings, model_path: str | None = None, work_dir: str | None = None) -> list[str]:
    """`lmdeploy lite auto_awq ...` with the settings' parameters (the bare baseline the kit is timed against)."""
    q = s.quantization
    args = [
        "lmdeploy",
        "lite",
        "auto_awq",
        model_path or s.fp16_path,
        "--work-dir",
        work_dir or s.quantized_path,
        "--calib-samples",
        str(q.calib_samples),
        "--calib-seqlen",
        str(q.calib_seqlen),
        "--batch-size",
        str(q.batch_size),
        "--w-bits",
        str(q.w_bits),
        "--w-group-size",
        str(q.w_group_size),
        "--dtype",
        q.dtype,
        "--device",
        q.device,
    ]
    if q.search_scale:
        args.append("--search-scale")
    if s.model.trust_remote_code:
        args.append("--trust-remote-code")
    return args


def auto_awq_kwargs(s: Settings) -> dict[str, Any]:
    """Keyword arguments for `lmdeploy.lite.apis.auto_awq.auto_awq` (same values as `auto_awq_args`)."""
    q = s.quantization
    return {
        "calib_samples": q.calib_samples,
        "calib_seqlen": q.calib_seqlen,
        "batch_size": q.batch_size,
        "w_bits": q.w_bits,
        "w_group_size": q.w_group_size,
        "search_scale": q.search_scale,
        "dtype": q.dtype,
        "device": q.device,
        "trust_remote_code": s.model.trust_remote_code,
    }


def flat_params(s: Settings) -> dict[str, str]:
    """Every setting and derived path as `KIT_SECTION_KEY` strings (params.env, env files, Ansible)."""
    out: dict[str, str] = {"KIT_PROFILE": s.profile}
    for section, model in s:
        if section == "profile":
            continue
        for key, value in model:
            out[f"KIT_{section}_{key}".upper()] = _fmt(value)
    out.update(
        KIT_FP16_PATH=s.fp16_path,
        KIT_QUANTIZED_PATH=s.quantized_path,
        KIT_SERVE_PATH=s.serve_path,
        KIT_CALIBRATION_PATH=s.calibration_path,
        KIT_MODEL_FORMAT=_fmt(s.effective_model_format),
    )
    return out


def api_base_url(s: Settings, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{s.serving.port}/v1"


def image_ref(s: Settings, name: str) -> str:
    """Image reference for `runtime` or `client`: tag from kit + lmdeploy versions, digest when set."""
    tag = f"{s.images.kit_version}-lmdeploy{s.versions.lmdeploy}"
    digest = {"runtime": s.images.runtime_digest, "client": s.images.client_digest}[name]
    ref = f"{s.images.registry}/{name}:{tag}"
    return f"{ref}@{digest}" if digest else ref
