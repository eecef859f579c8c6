"""Real image builds with podman from locally made bases (no registry), then the images' entry points.

client: the Dockerfile as shipped, offline (`--network none`); each client's `--help` runs inside
it, the function-call check runs against a replay server of recorded lmdeploy replies, and the
Gradio page runs as the Deployment runs it (read-only root, its env, the overlay's params.env).
runtime: the same Dockerfile with VARIANT=cpu (lmdeploy --no-deps + CPU torch): its Python
install branch, venv, user and entrypoint wiring; only the CUDA wheels cannot be exercised here.
"""

from __future__ import annotations

import html
import json

import pytest
import yaml

from tests.images.conftest import CPU_TORCH, PYBASE, REPO, TEST_REGISTRY, WHEELBASE, Podman, require_entry
from tests.support.net import free_port, wait_for_page
from tests.support.replay import RECORDED_DIR, SCENARIOS, ReplayServer, find_chat, load_exchanges, streamed_text

pytestmark = pytest.mark.slow

CLIENTS = ["chat", "webui", "funcall", "gpu_report"]


@pytest.fixture(scope="module")
def client_image(podman: Podman) -> str:
    require_entry("requirements/clients.txt")
    res = podman.build_py("--only", "client", "--from-base", PYBASE, "--network", "none")
    ref = res.stdout.strip().splitlines()[-1]
    assert ref.startswith(f"{TEST_REGISTRY}/client:") and podman.exists(ref)
    return ref


@pytest.fixture(scope="module")
def runtime_image(podman: Podman) -> str:
    # host network: the base has no Python, so the Dockerfile's apt branch installs it (like on the
    # CUDA base); pip stays offline through the wheelbase's PIP_NO_INDEX.
    res = podman.build_py(
        "--only", "runtime", "--variant", "cpu", "--from-base", WHEELBASE, "--network", "host", "--build-arg", f"TORCH_VERSION={CPU_TORCH}"
    )
    ref = res.stdout.strip().splitlines()[-1]
    assert ref.startswith(f"{TEST_REGISTRY}/runtime:") and ref.endswith("-cpu") and podman.exists(ref)
    return ref


def _config(podman: Podman, ref: str) -> dict:
    return json.loads(podman.run("image", "inspect", ref).stdout)[0]["Config"]


def _in(podman: Podman, ref: str, *args: str, network: str = "none", entrypoint: str | None = None, check: bool = True):
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    return podman.run("run", "--rm", "--network", network, *extra, ref, *args, check=check)


@pytest.mark.parametrize("image", ["client_image", "runtime_image"])
def test_image_runs_as_numeric_non_root_without_pip(podman, image, request):
    ref = request.getfixturevalue(image)
    cfg = _config(podman, ref)
    assert cfg["User"] == "10001"
    assert "Healthcheck" not in cfg or not cfg["Healthcheck"]
    assert _in(podman, ref, "-u", entrypoint="id").stdout.strip() == "10001"
    # settings.yaml and the kit package are in place: the rendered serve command comes out.
    out = _in(podman, ref, "-m", "kit", "get", "serving.port", entrypoint="python").stdout.strip()
    assert out == "23333"
    no_pip = _in(podman, ref, "-m", "pip", "--version", entrypoint="python", check=False)
    assert no_pip.returncode != 0 and "No module named pip" in no_pip.stderr


@pytest.mark.parametrize("name", CLIENTS)
def test_client_help_runs_inside_image(podman, client_image, name):
    require_entry(f"clients/{name}.py")
    res = _in(podman, client_image, f"clients.{name}", "--help")
    assert res.stdout.startswith("usage:") and "--help" in res.stdout


def test_client_default_command_is_the_gradio_page(podman, client_image):
    cfg = _config(podman, client_image)
    assert cfg["Entrypoint"] == ["/opt/venv/bin/python", "-m"] and cfg["Cmd"] == ["clients.webui"]


def test_funcall_check_inside_image_against_recorded_replies(podman, client_image):
    require_entry("clients/funcall.py")
    argv = next(s[2] for s in SCENARIOS if s[0] == "funcall-required")
    with ReplayServer(load_exchanges(RECORDED_DIR)) as srv:
        res = _in(podman, client_image, "clients.funcall", *argv, "--base-url", srv.base_url, network="host", check=False)
    assert srv.misses == [], "the check inside the image sent a request that was not recorded"
    verdict = json.loads(res.stdout)
    assert res.returncode == (0 if verdict["passed"] else 1), res.stderr
    chats = [q["body"] for q in srv.requests if q["path"] == "/v1/chat/completions"]
    assert chats and [t["function"]["name"] for t in chats[0]["tools"]] == ["add", "mul"]
    assert len(chats) == verdict["requests"]


def test_runtime_entrypoint_is_lmdeploy(podman, runtime_image):
    cfg = _config(podman, runtime_image)
    assert cfg["Entrypoint"] == ["lmdeploy"]
    res = _in(podman, runtime_image, "--help")
    assert "serve" in res.stdout and "lite" in res.stdout
    version = _in(
        podman, runtime_image, "-c", "import lmdeploy, torch; print(lmdeploy.__version__, torch.__version__)", entrypoint="python"
    )
    lmdeploy_version, torch_version = version.stdout.split()
    assert lmdeploy_version == podman_settings_version(podman, "lmdeploy")
    assert torch_version.startswith(CPU_TORCH)


def test_runtime_lite_and_jobs_entrypoints(podman, runtime_image):
    res = _in(podman, runtime_image, "lite", "auto_awq", "--help")
    assert "--w-group-size" in res.stdout
    require_entry("jobs/quantize.py")
    res = _in(podman, runtime_image, "-m", "jobs.quantize", "--help", entrypoint="python")
    assert res.stdout.startswith("usage:")


def podman_settings_version(podman: Podman, key: str) -> str:
    import yaml

    return str(yaml.safe_load(podman.settings.read_text())["defaults"]["versions"][key])


def test_runtime_carries_the_gpu_reporter(podman, runtime_image):
    """`make gpu` execs clients.gpu_report in the serving pod: it must be there and say plainly when no driver is."""
    res = _in(podman, runtime_image, "-m", "clients.gpu_report", "--json", entrypoint="python", check=False)
    assert res.returncode == 1, res.stderr
    assert "NVIDIA" in res.stderr and "Traceback" not in res.stderr


def test_gradio_page_runs_in_the_image_as_the_pod_runs_it(podman, client_image):
    """The Gradio Deployment's container: its env and securityContext from k8s/base, the default overlay's
    params.env, a read-only root with /tmp as the only writable place; the page talks to recorded replies."""
    require_entry("clients/webui.py")
    from gradio_client import Client

    pod = yaml.safe_load((REPO / "k8s" / "base" / "gradio-deployment.yaml").read_text())["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert [m["mountPath"] for m in ctr["volumeMounts"]] == ["/tmp"]
    params_env = REPO / "k8s" / "overlays" / "default" / "params.env"
    params = dict(line.split("=", 1) for line in params_env.read_text().splitlines() if "=" in line and not line.startswith("#"))
    port = free_port()
    env = {e["name"]: e["value"] for e in ctr["env"] if "value" in e}
    # host network in the test: a free port (params.env's KIT_GRADIO_PORT comes first in the app)
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), KIT_GRADIO_PORT=str(port))
    recorded = load_exchanges(RECORDED_DIR)
    prompt = dict((name, argv) for name, _, argv, _ in SCENARIOS)["chat-oneshot"][1]
    with ReplayServer(recorded, api_key="pod-secret-key") as srv:
        env.update(OPENAI_BASE_URL=srv.base_url, OPENAI_API_KEY="pod-secret-key")  # the Service URL and the Secret
        run = ["run", "-d", "--network", "host", "--read-only", "--tmpfs", "/tmp:rw,size=1g", "--cap-drop", "ALL"]
        run += ["--security-opt", "no-new-privileges", "--env-file", str(params_env)]
        run += [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        cid = podman.run(*run, client_image).stdout.strip()
        try:

            def running() -> bool:
                return podman.run("inspect", "-f", "{{.State.Running}}", cid, check=False).stdout.strip() == "true"

            page = wait_for_page(f"http://127.0.0.1:{port}/", running, 90)
            if page is None:
                pytest.fail(f"page never came up (running={running()}):\n{podman.run('logs', cid, check=False).stderr[-3000:]}")
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            status = client.predict(api_name="/status")
            reply = client.predict(prompt, "", 0.0, 32, api_name="/chat")
        finally:
            logs = podman.run("logs", cid, check=False)
            podman.run("rm", "-f", cid, check=False)
    assert params["KIT_GRADIO_TITLE"] in page
    assert f"(quant_policy {params['KIT_SERVING_QUANT_POLICY']}), {params['KIT_SERVING_BACKEND']} backend" in status
    assert html.unescape(reply) == streamed_text(find_chat(recorded, stream=True, last=prompt))
    assert "pod-secret-key" not in logs.stdout + logs.stderr
    assert f"Gradio page on http://127.0.0.1:{port}" in logs.stdout + logs.stderr
