"""What every client shares: where the server is, the API key, the model name, and one-line errors.

Values come from the flag, then the environment, then settings.yaml:

- base URL: `--base-url`, `OPENAI_BASE_URL`, else `http://127.0.0.1:<serving.port>/v1` (kit.render.api_base_url)
- API key: `--api-key`, `OPENAI_API_KEY`, `KIT_API_KEY`, `LMDEPLOY_API_KEY` (never printed or logged)
- model: `--model`, `KIT_MODEL`, else the first id from `/v1/models`
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kit import exitcodes
from kit.entry import KitError, add_settings_options, exit_code

if TYPE_CHECKING:
    import openai

    from kit.settings import Settings

log = logging.getLogger("clients")

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 1
API_KEY_ENVS = ("OPENAI_API_KEY", "KIT_API_KEY", "LMDEPLOY_API_KEY")
# Sent when no key is configured: a server without --api-keys ignores it, one with keys answers 401.
NO_KEY = "no-key"

CONNECTION_ENV_HELP = """\
environment:
  OPENAI_BASE_URL       server URL (default: settings serving.port on 127.0.0.1, path /v1)
  OPENAI_API_KEY        API key (also KIT_API_KEY, LMDEPLOY_API_KEY); never printed
  KIT_MODEL             model name (default: the first id of /v1/models)
  PROFILE, KIT_SETTINGS settings profile and file used for defaults
"""


class ClientError(KitError):
    """A known failure: one line for the user and the exit code to return."""


@dataclass
class Connection:
    base_url: str  # ends with /v1
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES

    @property
    def root_url(self) -> str:
        """Server root (where /health lives)."""
        return self.base_url.removesuffix("/v1")


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("server")
    g.add_argument("--base-url", help="OpenAI-compatible URL of the api_server, e.g. http://127.0.0.1:23333/v1")
    g.add_argument("--api-key", help="API key (prefer the OPENAI_API_KEY env var: flags show up in `ps`)")
    g.add_argument("--model", help="served model name (default: discovered from /v1/models)")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request (default %(default)s)")
    g.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries on connection errors/5xx (default %(default)s)")
    add_settings_options(g, overrides=False, settings_file=False, verbosity=False)


def load_kit_settings(profile: str | None) -> Settings:
    from kit.settings import SettingsError, load_settings

    try:
        return load_settings(profile)
    except SettingsError as exc:
        raise ClientError(str(exc), exitcodes.USAGE) from None


def normalize_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ClientError(f"base URL {url!r} must start with http:// or https://", exitcodes.USAGE)
    return url if url.endswith("/v1") else url + "/v1"


def resolve_connection(args: argparse.Namespace) -> Connection:
    """Flag, then env, then settings; no network access here."""
    url = args.base_url or os.environ.get("OPENAI_BASE_URL")
    if not url:
        from kit.render import api_base_url

        url = api_base_url(load_kit_settings(args.profile))
    key = api_key(args)
    if args.timeout <= 0 or args.retries < 0:
        raise ClientError("--timeout must be > 0 and --retries >= 0", exitcodes.USAGE)
    model = args.model or os.environ.get("KIT_MODEL") or None
    return Connection(normalize_base_url(url), key, model, args.timeout, args.retries)


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key or the env, without the newline a Secret file or `echo` leaves around it.

    An HTTP header cannot carry a newline: httpx refuses to send it, and the SDK reports that as a
    connection error. Whitespace around the key is stripped; inside it, it is a usage error.
    """
    origin, key = (
        ("--api-key", args.api_key) if args.api_key else next(((k, os.environ[k]) for k in API_KEY_ENVS if os.environ.get(k)), ("", None))
    )
    if key is None:
        return None
    if key != key.strip():
        log.info("removed whitespace around the API key from %s", origin)
        key = key.strip()
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ClientError(
            f"the API key from {origin} contains whitespace or a control character, which an HTTP header cannot carry; check its value",
            exitcodes.USAGE,
        )
    return key or None


def make_client(conn: Connection) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=conn.base_url, api_key=conn.api_key or NO_KEY, timeout=conn.timeout, max_retries=conn.retries)


def check_health(conn: Connection) -> None:
    """GET /health (no key needed): 503 means the engine is still loading the model."""
    import httpx

    url = conn.root_url + "/health"
    try:
        resp = httpx.get(url, timeout=min(conn.timeout, 10.0))
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the server at {conn.root_url} ({type(exc).__name__}); is it running / port-forwarded?") from None
    if resp.status_code == 503:
        detail = _json_field(resp, "message") or "engine not ready"
        raise ClientError(f"the server at {conn.root_url} is still loading the model (/health 503: {detail}); retry in a minute")
    log.debug("GET %s -> %s", url, resp.status_code)


def discover_model(client: openai.OpenAI, conn: Connection) -> str:
    if conn.model:
        return conn.model
    models = client.models.list().data
    if not models:
        raise ClientError(f"the server at {conn.base_url} lists no models (/v1/models is empty)")
    conn.model = models[0].id
    log.info("model: %s", conn.model)
    return conn.model


def connect(conn: Connection) -> tuple[openai.OpenAI, str]:
    """Health check, client and model name; raises ClientError with a one-line message."""
    check_health(conn)
    client = make_client(conn)
    try:
        return client, discover_model(client, conn)
    except Exception as exc:
        raise as_client_error(exc, conn) from None


def as_client_error(exc: BaseException, conn: Connection) -> BaseException:
    """Map openai SDK errors to a one-line ClientError; anything else is returned unchanged."""
    import httpx
    import openai

    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ClientError(f"the server at {conn.base_url} did not answer within {conn.timeout:g} s (--timeout)")
    if isinstance(exc, openai.APIConnectionError) and isinstance(exc.__cause__, httpx.LocalProtocolError):
        return ClientError(f"the request to {conn.base_url} could not be sent (invalid header: check the API key and --base-url)")
    if isinstance(exc, openai.APIConnectionError):
        return ClientError(f"cannot reach the server at {conn.base_url}; is it running / port-forwarded?")
    if isinstance(exc, openai.AuthenticationError):
        hint = "set OPENAI_API_KEY (or --api-key)" if not conn.api_key else "check OPENAI_API_KEY / --api-key"
        return ClientError(f"the server at {conn.base_url} rejected the API key (401); {hint}")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 503:
            return ClientError(f"the server at {conn.base_url} is not ready (503): {_message(exc)}")
        return ClientError(f"the server at {conn.base_url} answered {exc.status_code}: {_message(exc)}")
    if isinstance(exc, openai.APIError):
        return ClientError(f"the server at {conn.base_url} reported an error: {_message(exc)}")
    return exc


def run_guarded(conn: Connection | None, fn: Any, *args: Any) -> int:
    """Call fn(*args); known failures print one line on stderr and return their exit code."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except Exception as exc:
        err = as_client_error(exc, conn) if conn else exc
        code = exit_code(err)  # kit.entry's mapping; clients log the line instead of printing it
        if code is None:
            log.debug("unexpected error", exc_info=True)
            raise
        log.error("%s", err)
        return code


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", exc))


def _json_field(resp: Any, key: str) -> str | None:
    try:
        data = resp.json()
    except ValueError:
        return None
    return str(data.get(key)) if isinstance(data, dict) and data.get(key) else None


def stream_reply(
    client: openai.OpenAI, model: str, messages: list[dict[str, Any]], temperature: float | None, max_tokens: int | None
) -> Any:
    """Yield the assistant's text as it streams (chat and the Gradio page share this)."""
    kwargs: dict[str, Any] = {}
    if temperature is not None:
        kwargs["temperature"] = temperature
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, **kwargs)
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                yield choice.delta.content


def run_client(args: Any, fn: Any) -> int:
    """Resolve the connection from args/env/settings, then run fn(args, conn) guarded."""
    try:
        conn = resolve_connection(args)
    except ClientError as exc:
        log.error("%s", exc)
        return exc.code
    return run_guarded(conn, fn, args, conn)
