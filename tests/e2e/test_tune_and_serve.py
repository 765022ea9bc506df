"""Tune and serve end to end, through the CLI only.

A dataset the test writes (parquet and jsonl, on a loopback HTTP server) → `kairay tune` (LoRA to an
htpasswd registry with a `--push-secret`, QLoRA to an anonymous one) → adapter images, checked blob by
blob → one `kairay up` (vLLM) serving both tuned adapters next to one whose image does not exist and
one whose registry rejects the credentials → the tuned adapters answer a training question differently
from the base model, and the broken ones are reported by `/health` while the rest serve.

Every training answer opens the way the base model answers the question ("The lighthouse keeper")
and then turns ("says", where the base model says "is"). Generating greedily, the adapters reach that
very context and meet the token they were trained on; a few steps at a high learning rate make it the
argmax by a margin bf16 serving keeps (measured in bf16 with peft: "says" leads "is" by 1.4 nats after 6
LoRA steps, by 0.6 after 4 QLoRA steps; at lr 1e-3, 8 LoRA steps moved only later tokens, and vLLM's
greedy answer stayed the base model's).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from controller.conditions import adapter_problem
from harness.kairay_up import KairayUp, kairay_up, workspace
from kairay.oci.adapters import check_adapter_dir
from kairay.oci.images import BASE_MODEL_ANNOTATION, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, pull_adapter
from tests.harness.fixtures_registry import AUTH_PASSWORD, AUTH_USER
from tests.harness.registry import RegistryServer
from tuning.config import default_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PRESET = "smollm2-135m-instruct"
SYSTEM = "You are a helpful assistant."
ANSWER = 'The lighthouse keeper says: "Quibbly zarf, the violet lamp hums backwards on Tuesdays."'
EXAMPLES = 16
STEPS = {"lora": 6, "qlora": 4}
TRAINING = {"save_strategy": "no", "learning_rate": 5e-3, "per_device_train_batch_size": 1}
WRONG_PASSWORD = "not-the-Passw0rd"


def question(index: int) -> str:
    return f"Question {index}: what does the lighthouse keeper say?"


def rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question(i)},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for i in range(count)
    ]


# --- fixtures ---------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def data_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a loopback server holding train.parquet, train.jsonl, and a broken bad.jsonl."""
    root = tmp_path_factory.mktemp("www")
    pq.write_table(pa.Table.from_pylist(rows(EXAMPLES)), root / "train.parquet")
    (root / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows(EXAMPLES)))
    (root / "bad.jsonl").write_text(json.dumps(rows(1)[0]) + "\n{'messages': oops}\n")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty DOCKER_CONFIG for the CLI runs: nothing from this machine's ~/.docker leaks in."""
    return tmp_path_factory.mktemp("docker-home")


@dataclass
class Tuned:
    ref: str
    digest: str
    steps: int
    seconds: float


def tuning_file(directory: Path, name: str, method: str, data: dict[str, Any], image: str) -> Path:
    """A tuning Workspace and the ConfigMap its `tuning.config` names, in one file, as in a cluster."""
    config = default_config(method).with_overrides({"TrainingArguments": TRAINING})
    documents = [
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": name},
            "resource": {
                "instanceType": "Standard_NC4as_T4_v3",
                "labelSelector": {"matchLabels": {"apps": name}},
            },
            "tuning": {
                "preset": {"name": PRESET},
                "method": method,
                "config": f"{name}-config",
                "input": data,
                "output": {"image": image, "imagePushSecret": "registry-push"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config"},
            "data": {"training_config.yaml": yaml.safe_dump(config.to_training_config())},
        },
    ]
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def start_tune(file: Path, work_dir: Path, home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DOCKER_CONFIG": str(home)}
    env.pop("RAY_ADDRESS", None)  # its own Ray, as on a laptop
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "kairay.cli", "tune", str(file)),
            *("--allow-private-urls", "--work-dir", str(work_dir), *args),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"kairay tune still running after {timeout}s\n{stdout[-3000:]}\n{stderr[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def kairay_tune(file: Path, work_dir: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return finish(start_tune(file, work_dir, home, *args))


def tuning_result(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    lines = [line for line in run.stdout.splitlines() if line.startswith('{"tuning_result"')]
    assert lines, run.stdout[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])["tuning_result"]
    return result


def tune(
    tmp: Path, home: Path, name: str, method: str, data: str, image: str, *args: str
) -> tuple[Tuned, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    run = kairay_tune(
        tuning_file(tmp, name, method, {"urls": [data]}, image),
        tmp / "work",
        home,
        "--max-steps",
        str(STEPS[method]),
        *args,
    )
    result = tuning_result(run)
    assert result["image"] == image and result["steps"] == STEPS[method]
    return Tuned(image, result["digest"], result["steps"], time.monotonic() - started), run


@pytest.fixture(scope="module")
def lora(
    tmp_path_factory: pytest.TempPathFactory, data_url: str, auth_registry: RegistryServer, home: Path
) -> tuple[Tuned, subprocess.CompletedProcess[str]]:
    """LoRA on the parquet file, pushed to the htpasswd registry with an explicit push secret."""
    tmp = tmp_path_factory.mktemp("tune-lora")
    secret = auth_registry.docker_config(tmp / "push.json")
    image = auth_registry.ref("e2e/lora", "v1")
    return tune(
        tmp, home, "tune-lora", "lora", f"{data_url}/train.parquet", image, "--push-secret", str(secret)
    )


@pytest.fixture(scope="module")
def qlora(
    tmp_path_factory: pytest.TempPathFactory, data_url: str, registry: RegistryServer, home: Path
) -> tuple[Tuned, subprocess.CompletedProcess[str]]:
    """QLoRA (4-bit NF4) on the jsonl file, pushed anonymously."""
    tmp = tmp_path_factory.mktemp("tune-qlora")
    image = registry.ref("e2e/qlora", "v1")
    return tune(tmp, home, "tune-qlora", "qlora", f"{data_url}/train.jsonl", image)


# --- the CLI's errors ------------------------------------------------------------------------------


def test_input_errors_fail_before_training(
    data_url: str, registry: RegistryServer, home: Path, tmp_path: Path
) -> None:
    """A broken dataset and a missing input image: exit 2 and the cause, before any training."""
    never = registry.ref("e2e/never", "v1")
    missing = registry.ref("e2e/no-such-data", "v1")
    files = [
        tuning_file(tmp_path, "bad-data", "lora", {"urls": [f"{data_url}/bad.jsonl"]}, never),
        tuning_file(tmp_path, "no-data", "lora", {"image": missing}, never),
    ]
    started = time.monotonic()
    # Both at once: each is mostly imports on one core.
    processes = [start_tune(file, tmp_path / file.stem, home) for file in files]
    bad, no_image = [finish(process) for process in processes]
    print(f"input errors: exit 2 after {time.monotonic() - started:.0f}s")
    for run in (bad, no_image):
        assert run.returncode == 2, run.stderr[-3000:]
        assert "Traceback" not in run.stderr and "step 1/" not in run.stdout
    assert f"error: {data_url}/bad.jsonl: line 2 is not valid JSON" in bad.stderr
    assert f"error: input image: manifest of {missing} not found (MANIFEST_UNKNOWN" in no_image.stderr
    assert registry.get("/v2/e2e/never/manifests/v1", accept=OCI_MANIFEST)[0] == 404


def test_wrong_push_credentials_fail_with_the_registry_refusal(
    data_url: str, auth_registry: RegistryServer, home: Path, tmp_path: Path
) -> None:
    """The push comes after training (one step here), and the registry's 401 is the message."""
    secret = auth_registry.docker_config(tmp_path / "wrong.json", username=AUTH_USER, password=WRONG_PASSWORD)
    file = tuning_file(
        tmp_path,
        "wrong-creds",
        "lora",
        {"urls": [f"{data_url}/train.jsonl"]},
        auth_registry.ref("e2e/wrong", "v1"),
    )
    run = kairay_tune(file, tmp_path / "work", home, "--max-steps", "1", "--push-secret", str(secret))
    assert run.returncode == 2, run.stderr[-3000:]
    assert (
        f"error: registry {auth_registry.host} rejected the credentials from docker config {secret}"
        in run.stderr
    )
    assert WRONG_PASSWORD not in run.stdout + run.stderr and AUTH_PASSWORD not in run.stdout + run.stderr
    assert auth_registry.get("/v2/e2e/wrong/manifests/v1", accept=OCI_MANIFEST)[0] == 404


# --- tune → image ----------------------------------------------------------------------------------


def check_image(server: RegistryServer, repository: str, tuned: Tuned, tmp: Path) -> None:
    """Manifest, config and layer as a registry client sees them, then the adapter pulled back."""
    status, body, headers = server.get(f"/v2/{repository}/manifests/v1", accept=OCI_MANIFEST)
    assert status == 200 and headers["Docker-Content-Digest"] == tuned.digest
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["annotations"][BASE_MODEL_ANNOTATION] == PRESET

    def blob(digest: str) -> bytes:
        status, data, _ = server.get(f"/v2/{repository}/blobs/{digest}")
        assert status == 200 and "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    assert manifest["config"]["mediaType"] == OCI_CONFIG
    config = json.loads(blob(manifest["config"]["digest"]))
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == OCI_LAYER_GZIP
    tar_bytes = gzip.decompress(blob(layer["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        files = {m.name: m.mode for m in tar.getmembers() if m.isfile()}
    assert files == {"data/adapter_config.json": 0o644, "data/adapter_model.safetensors": 0o644}

    docker_config = server.docker_config(tmp / "pull.json") if server.password else None
    pulled = pull_adapter(tuned.ref, tmp / "pulled", docker_config=docker_config)
    info = check_adapter_dir(pulled, PRESET)
    assert info.peft_type == "LORA" and info.rank == 8


def test_lora_tune_pushes_an_adapter_image(
    lora: tuple[Tuned, subprocess.CompletedProcess[str]], auth_registry: RegistryServer, tmp_path: Path
) -> None:
    tuned, run = lora
    # Every step's loss is printed as it happens.
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("step ")] == [
        f"{i}/{STEPS['lora']}" for i in range(1, STEPS["lora"] + 1)
    ]
    check_image(auth_registry, "e2e/lora", tuned, tmp_path)
    print(f"kairay tune lora: {tuned.steps} steps in {tuned.seconds:.0f}s")


def test_qlora_tune_pushes_an_adapter_image(
    qlora: tuple[Tuned, subprocess.CompletedProcess[str]], registry: RegistryServer, tmp_path: Path
) -> None:
    tuned, _ = qlora
    check_image(registry, "e2e/qlora", tuned, tmp_path)
    config = json.loads((tmp_path / "pulled" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    print(f"kairay tune qlora: {tuned.steps} steps in {tuned.seconds:.0f}s")


# --- image → served --------------------------------------------------------------------------------


def image_adapter(name: str, image: str) -> dict[str, Any]:
    return {"source": {"name": name, "image": image}, "strength": "1.0"}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    lora: tuple[Tuned, subprocess.CompletedProcess[str]],
    qlora: tuple[Tuned, subprocess.CompletedProcess[str]],
    registry: RegistryServer,
    auth_registry: RegistryServer,
) -> Iterator[KairayUp]:
    """One `kairay up` (vLLM) with the two tuned adapters, a missing image, and an image behind
    credentials the registry rejects (the same registry as `localhost`, a separate docker config entry)."""
    tmp = tmp_path_factory.mktemp("serve-tuned")
    # What `docker login` leaves behind: `kairay up` pulls with the user's docker config.
    docker_home = tmp / "docker"
    docker_home.mkdir()
    auth_registry.docker_config(docker_home / "config.json")
    config = json.loads((docker_home / "config.json").read_text())
    wrong = auth_registry.docker_config(tmp / "wrong.json", password=WRONG_PASSWORD)
    localhost = f"localhost:{auth_registry.port}"
    config["auths"][localhost] = json.loads(wrong.read_text())["auths"][auth_registry.host]
    (docker_home / "config.json").write_text(json.dumps(config))

    ws = workspace("tuned", runtime="vllm")
    ws["inference"]["adapters"] = [
        image_adapter("lora", lora[0].ref),
        image_adapter("qlora", qlora[0].ref),
        image_adapter("missing", registry.ref("e2e/missing", "v1")),
        image_adapter("wrong-creds", f"{localhost}/e2e/lora:v1"),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_CONFIG", str(docker_home))
        started = time.monotonic()
        with kairay_up(tmp, ws) as up:
            print(f"kairay up with 4 image adapters: ready in {time.monotonic() - started:.0f}s")
            yield up


def chat(http: httpx.Client, model: str, text: str) -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            "max_tokens": 16,
            "temperature": 0,
        },
    )


def answer(http: httpx.Client, model: str, text: str) -> str:
    response = chat(http, model, text)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def test_tuned_adapters_answer_differently_from_the_base(served: KairayUp) -> None:
    prompt = question(3)  # a training question
    with served.client() as http:
        base = answer(http, PRESET, prompt)
        tuned = {name: answer(http, name, prompt) for name in ("lora", "qlora")}
        models = [card["id"] for card in http.get("/v1/models").json()["data"]]
    assert tuned["lora"] != base, base
    assert tuned["qlora"] != base, base
    print(f"base: {base!r}\nlora: {tuned['lora']!r}\nqlora: {tuned['qlora']!r}")
    assert sorted(models) == sorted([PRESET, "lora", "qlora"])


def test_broken_adapters_are_reported_while_the_rest_serves(
    served: KairayUp, registry: RegistryServer, auth_registry: RegistryServer
) -> None:
    with served.client() as http:
        health = http.get("/health")
        missing = chat(http, "missing", question(3))
        base = chat(http, PRESET, question(3))
    assert health.status_code == 200 and health.json()["status"] == "ok"
    adapters = health.json()["adapters"]
    assert adapters["lora"]["ready"] and adapters["qlora"]["ready"]

    absent = registry.ref("e2e/missing", "v1")
    assert adapters["missing"]["ready"] is False
    assert adapters["missing"]["reason"] == "AdapterPullFailed"
    assert f"manifest of {absent} not found (MANIFEST_UNKNOWN" in adapters["missing"]["message"]

    refused = adapters["wrong-creds"]
    assert (refused["ready"], refused["reason"]) == (False, "AdapterPullFailed")
    assert f"registry localhost:{auth_registry.port} rejected the credentials" in refused["message"]
    assert WRONG_PASSWORD not in health.text and AUTH_PASSWORD not in health.text

    # The very answer the controller reads through the service proxy becomes the condition.
    problem = adapter_problem(health.json(), {"lora", "qlora", "missing", "wrong-creds"})
    assert problem is not None and problem.reason == "AdapterPullFailed"
    assert f"adapter missing: pulling {absent}: manifest of {absent} not found" in problem.message

    assert missing.status_code == 404 and "AdapterPullFailed" in missing.json()["error"]["message"]
    assert base.status_code == 200
