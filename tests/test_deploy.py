"""Deployment files: hadolint, offline Kubernetes schema validation, YAML checks, the image's
command line run locally on a CPU, and the start-up device check with a mocked GPU."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
import yaml

from service.server.device import DeviceError, check_device

from .servers import free_port, png_bytes, random_image, wait_ready

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
VENV_BIN = Path(sys.executable).parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(VENV_BIN / "hadolint")
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_essentials():
    instructions = dockerfile_instructions()
    text = (DOCKER / "Dockerfile").read_text()
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert healthchecks and "/readyz" in healthchecks[0]
    assert re.search(r"download\.pytorch\.org/whl/cu126", text) and "TORCH_VERSION=2.14" in text
    assert any(op == "RUN" and "loss-service weights fetch" in arg for op, arg in instructions)
    assert "ARG FETCH_WEIGHTS" in text
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)", text, re.M) + [arg for op, arg in instructions if op == "FROM" and "$" not in arg]:
        assert ":" in image and not image.endswith(":latest"), image
    cmd = json.loads(next(arg for op, arg in instructions if op == "CMD"))
    assert cmd[:1] == ["serve"] and "0.0.0.0" in cmd
    assert (ROOT / ".dockerignore").exists()


def test_image_command_line_runs_on_cpu(weights_dir):
    instructions = dockerfile_instructions()
    entrypoint = json.loads(next(arg for op, arg in instructions if op == "ENTRYPOINT"))
    cmd = json.loads(next(arg for op, arg in instructions if op == "CMD"))
    assert entrypoint == ["loss-service"]
    port = free_port()
    # Same command line; then tests' overrides: loopback only, a free port, random weights on a CPU.
    argv = [str(VENV_BIN / entrypoint[0]), *cmd, "--host", "127.0.0.1", "--port", str(port), "--random-weights", "--models", "vgg16"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process=process)
        image = png_bytes(random_image(16, 16, 0))
        response = httpx.post(f"{url}/v1/score", files=[("sr", ("a.png", image)), ("gt", ("b.png", image))], data={"metrics": "perceptual"})
        assert response.status_code == 200 and response.json()["pretrained"] is False
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_kubernetes_manifests_validate_offline():
    tool = shutil.which("kubernetes-validate") or str(VENV_BIN / "kubernetes-validate")
    files = sorted(str(p) for p in (DOCKER / "k8s").glob("*.yaml"))
    result = subprocess.run([tool, "--strict", "-k", "1.30.0", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def load_k8s() -> dict[str, dict]:
    documents = [d for p in (DOCKER / "k8s").glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["kind"]: d for d in documents}


def test_kubernetes_essentials():
    manifests = load_k8s()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(manifests)
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "preStop" in container["lifecycle"] and pod["terminationGracePeriodSeconds"] >= 30
    assert container["resources"]["requests"] and pod["securityContext"]["runAsNonRoot"]
    port = container["ports"][0]["containerPort"]
    assert "--port" in container["args"] and str(port) == container["args"][container["args"].index("--port") + 1]
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] in ("http", port)
    assert not container["image"].endswith(":latest") and ":" in container["image"]
    # RELIABILITY.md's security claims: read-only root, no privilege escalation, every capability
    # dropped, a non-root uid; the only writable path is the /tmp volume.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add")
    assert pod["securityContext"]["runAsUser"] != 0 and pod["securityContext"]["runAsGroup"] != 0
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tmp"]["mountPath"] == "/tmp" and any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    assert all(m.get("readOnly") for name, m in mounts.items() if name != "tmp")
    assert "--offline" in container["args"]


def test_compose_essentials():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["loss-service"]
    devices = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["driver"] == "nvidia" and "gpu" in devices["capabilities"]
    assert service["deploy"]["resources"]["limits"]["memory"]
    assert service["restart"] == "unless-stopped"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert any(v.startswith("weights:") for v in service["volumes"]) and "weights" in compose["volumes"]
    assert not service["image"].endswith(":latest")


def mocked_gpu(monkeypatch, capability, arch_list):
    props = SimpleNamespace(
        name="Tesla P4" if capability < (7, 0) else "Tesla T4", major=capability[0], minor=capability[1], total_memory=8 * 2**30
    )
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)


def test_device_check_refuses_half_precision_on_pascal(monkeypatch, caplog):
    mocked_gpu(monkeypatch, (6, 1), ["sm_60", "sm_61", "sm_70"])
    with pytest.raises(DeviceError, match="fp16.*6.1"):
        check_device(torch.device("cuda"), "fp16")
    with caplog.at_level("INFO", logger="loss_service"):
        assert check_device(torch.device("cuda"), "fp32") == []
    assert "Tesla P4" in caplog.text and "6.1" in caplog.text and "8.0 GiB" in caplog.text


def test_device_check_warns_on_missing_kernels(monkeypatch):
    mocked_gpu(monkeypatch, (6, 1), ["sm_75", "sm_80", "sm_90"])
    warnings = check_device(torch.device("cuda"), "fp32")
    assert len(warnings) == 1 and "sm_61" in warnings[0] and "12.6" in warnings[0]
    mocked_gpu(monkeypatch, (7, 5), ["sm_75"])
    assert check_device(torch.device("cuda"), "bf16") == []


def test_kuberay_cluster_runs_the_projects_image_with_the_ray_extra():
    """docker/kuberay/raycluster.yaml: head and GPU workers on one image, built with EXTRAS=server,ray;
    its Ray version within the ray extra's bound."""
    from packaging.specifiers import SpecifierSet

    manifest = yaml.safe_load((DOCKER / "kuberay" / "raycluster.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    spec = manifest["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [group["template"]["spec"]["containers"][0] for group in spec["workerGroupSpecs"]]
    assert {worker["image"] for worker in workers} == {head["image"]} and "loss-service" in head["image"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # no scoring actor on the head
    assert all(worker["resources"]["limits"]["nvidia.com/gpu"] == 1 for worker in workers)
    assert "--build-arg EXTRAS=server,ray" in (DOCKER / "kuberay" / "raycluster.yaml").read_text()
    assert 'pip install ".[${EXTRAS}]"' in (DOCKER / "Dockerfile").read_text()
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    bound = next(requirement for requirement in extra if requirement.startswith("ray["))
    assert spec["rayVersion"] in SpecifierSet(bound.split("]", 1)[1])
