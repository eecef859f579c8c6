"""`python -m clients.webui`: a Gradio chat page for the served model (lmdeploy no longer ships one).

Streams replies from the api_server and shows server errors in the chat. Its header shows the
model the server reports (/v1/models) and, labelled as configured, the quantization of the
profile or pod env: lmdeploy's API does not report its weights or KV-cache format. The API key
stays on the server side of the page. Listens on settings gradio.port; on 0.0.0.0 in a
Kubernetes pod (KUBERNETES_SERVICE_HOST), on 127.0.0.1 elsewhere (--host / GRADIO_SERVER_NAME).
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from clients._common import (
    CONNECTION_ENV_HELP,
    ClientError,
    Connection,
    add_connection_args,
    as_client_error,
    check_health,
    discover_model,
    load_kit_settings,
    make_client,
    resolve_connection,
    stream_reply,
)
from kit import exitcodes
from kit.logs import add_verbosity, setup_logging

if TYPE_CHECKING:
    import gradio as gr

    from kit.settings import Settings

log = logging.getLogger("clients.webui")
KV_CACHE = {0: "fp16/bf16 KV cache", 8: "int8 KV cache", 4: "int4 KV cache"}


def quant_summary(settings: Settings | None) -> str:
    """Weights and KV-cache quantization, from the pod's KIT_* env (params.env) or settings."""
    fmt = os.environ.get("KIT_MODEL_FORMAT", settings.effective_model_format if settings else None)
    policy = os.environ.get("KIT_SERVING_QUANT_POLICY", str(settings.serving.quant_policy) if settings else "")
    backend = os.environ.get("KIT_SERVING_BACKEND", settings.serving.backend if settings else "")
    if not policy:
        return "quantization: unknown (no settings)"
    weights = "AWQ W4A16 weights" if fmt == "awq" else "fp16 weights"
    kv = KV_CACHE.get(int(policy), f"quant_policy {policy}")
    return f"{weights}, {kv} (quant_policy {policy})" + (f", {backend} backend" if backend else "")


def configured_label(settings: Settings | None) -> str:
    """Where the quantization shown comes from: the pod's env (params.env) or the settings profile."""
    if os.environ.get("KIT_SERVING_QUANT_POLICY"):
        return "configured (this pod's env)"
    return f"configured profile `{settings.profile}`" if settings else "configured"


def _quiet_gradio_deprecations() -> None:
    """gradio 6's queue reads starlette's deprecated HTTP_422_UNPROCESSABLE_ENTITY on every request; not ours to fix."""
    warnings.filterwarnings("ignore", message="'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated", module="gradio")


def _text(content: Any) -> str:
    """Gradio message content (a string, or a list of parts in Gradio 6) -> plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return ""


def to_messages(message: Any, history: list[Any], system: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for item in history:
        if isinstance(item, dict) and item.get("role") in ("user", "assistant"):
            text = _text(item.get("content"))
            if text and not text.startswith("⚠️"):  # earlier error notes are not conversation
                if item["role"] == "assistant":
                    text = html.unescape(text)  # shown escaped (see respond), sent back verbatim
                msgs.append({"role": item["role"], "content": text})
    msgs.append({"role": "user", "content": _text(message)})
    return msgs


def build_app(conn: Connection, settings: Settings | None, title: str) -> gr.Blocks:
    import gradio as gr

    _quiet_gradio_deprecations()
    quant = f"{configured_label(settings)}: {quant_summary(settings)}"

    def status() -> str:
        try:
            check_health(conn)
            model = discover_model(make_client(conn), conn)
        except Exception as exc:
            return f"⚠️ {as_client_error(exc, conn)}  \n{quant}"
        return f"**model** `{model}` at `{conn.base_url}` (reported by the server)  \n{quant}"

    def respond(message: Any, history: list[Any], system: str, temperature: float, max_tokens: float) -> Iterator[str]:
        text = ""
        try:
            client = make_client(conn)
            model = discover_model(client, conn)
            for piece in stream_reply(client, model, to_messages(message, history, system), temperature, int(max_tokens)):
                text += piece
                # Escaped for display: the chat view renders HTML, which would swallow tag-like
                # model output such as `<|action_start|>` or a random model's `<filler_1>`.
                yield html.escape(text, quote=False)
        except Exception as exc:
            err = as_client_error(exc, conn)
            if not isinstance(err, ClientError):
                log.exception("unexpected error while streaming")
                err = f"unexpected error: {type(exc).__name__}: {exc}"
            log.error("%s", err)
            yield (html.escape(text, quote=False) + "\n\n" if text else "") + f"⚠️ **Server error:** {err}"

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}")
        info = gr.Markdown(f"connecting to `{conn.base_url}` ...  \n{quant}", elem_id="server-info")
        gr.ChatInterface(
            respond,
            additional_inputs=[
                gr.Textbox(label="System prompt", value="", render=False),
                gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", render=False),
                gr.Slider(16, 4096, value=512, step=16, label="Max new tokens", render=False),
            ],
            additional_inputs_accordion="Generation settings",
            api_name="chat",
            flagging_mode="never",
        )
        app.load(status, outputs=info)
    return app


def _env_port() -> str | None:
    return os.environ.get("KIT_GRADIO_PORT") or os.environ.get("GRADIO_SERVER_PORT")


def listen_host(flag: str | None) -> str:
    """--host, then GRADIO_SERVER_NAME; else 0.0.0.0 in a Kubernetes pod (it sets KUBERNETES_SERVICE_HOST in
    every pod) and 127.0.0.1 anywhere else, `docker run` included: a page holding the API key stays local unless told."""
    if flag or os.environ.get("GRADIO_SERVER_NAME"):
        return flag or os.environ["GRADIO_SERVER_NAME"]
    return "0.0.0.0" if os.environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"  # noqa: S104 - a pod listens on its IP


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients.webui",
        description=__doc__.split("\n\n")[0],
        epilog=CONNECTION_ENV_HELP
        + "  KIT_GRADIO_PORT       page port (also GRADIO_SERVER_PORT; default: settings gradio.port)\n"
        + "  GRADIO_SERVER_NAME    listen address (default: 0.0.0.0 in a Kubernetes pod, else 127.0.0.1)\n"
        + "  KIT_MODEL_FORMAT, KIT_SERVING_QUANT_POLICY, KIT_SERVING_BACKEND  quantization shown on the page\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="listen address (default: $GRADIO_SERVER_NAME; 0.0.0.0 in a Kubernetes pod, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="page port (default: $KIT_GRADIO_PORT, $GRADIO_SERVER_PORT or settings gradio.port)")
    p.add_argument("--title", help="page title (default: settings gradio.title)")
    add_connection_args(p)
    add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        conn = resolve_connection(args)
        try:
            settings: Settings | None = load_kit_settings(args.profile)
        except ClientError as exc:
            if args.port is None and not _env_port():
                raise
            # Normal in a pod: params.env (KIT_*) carries what the page shows.
            log.info("settings not loaded (%s); quantization details come from KIT_* env only", exc)
            settings = None
    except ClientError as exc:
        log.error("%s", exc)
        return exc.code
    port = args.port or int(_env_port() or settings.gradio.port)  # type: ignore[union-attr]
    host = listen_host(args.host)
    title = args.title or (settings.gradio.title if settings else "lmdeploy chat")
    app = build_app(conn, settings, title)
    if not args.quiet:
        print(f"Gradio page on http://{host}:{port} talking to {conn.base_url}", file=sys.stderr, flush=True)
    try:
        app.queue().launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (--port / KIT_GRADIO_PORT)", host, port, exc)
        return exitcodes.FAILED
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
