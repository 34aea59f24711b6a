"""The shape of the code, checked: no import cycle, one plan per clip, links that resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def import_graph(packages=("losses", "service")) -> dict[str, set[str]]:
    """Module → the project modules it imports (at any depth of the file: lazy imports count)."""
    modules = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                # ``from . import errors`` imports the submodule, not the package
                found.update(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names)
        graph[name] = {dep for dep in found if dep in modules and dep != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_the_project():
    graph = import_graph()
    assert "losses.registry" in graph and "service.server.scoring" in graph
    assert cycles(graph) == []


TORCH_FREE_LIBRARY = {"losses", "losses.sets.statistics", "losses.clips.means"}


def test_the_client_imports_only_the_torch_free_library_and_never_the_server():
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith("service.client"):
            assert not {d for d in deps if d.startswith("service.server")}, module
            assert {d for d in deps if d.startswith("losses")} <= TORCH_FREE_LIBRARY, module
    for module in TORCH_FREE_LIBRARY - {"losses"}:
        assert graph[module] == set(), f"{module} must import nothing of the project"


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_100_frame_clip_is_planned_once_and_never_looked_up_again(weights_dir, monkeypatch):
    """``score_clip`` plans its metrics once; each chunk of frames goes to the registry with that plan."""
    import losses
    from losses import registry

    lookups = []
    real = registry.get_metrics
    monkeypatch.setattr(registry, "get_metrics", lambda *a, **k: lookups.append(a) or real(*a, **k))
    monkeypatch.setattr("losses.plan.get_metrics", registry.get_metrics)
    calls = []
    real_compute = registry.compute
    monkeypatch.setattr("losses.clips.scoring.compute", lambda *a, **k: calls.append(a[0]) or real_compute(*a, **k))
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(100, 3, 48, 48, generator=g)
    sr = (gt + 0.05 * torch.rand(100, 3, 48, 48, generator=g)).clamp(0, 1)
    result = losses.score_clip(sr, gt, metrics=["psnr", "ssim", "tof"], chunk=16, weights_dir=weights_dir)
    assert len(lookups) == 1 and len(calls) == 7  # ceil(100 / 16) chunks, one lookup
    assert all(metrics is calls[0] for metrics in calls)
    assert len(result["per_frame"]["psnr"]) == 100 and result["frames"]["tof"] == list(range(3, 98))


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_markdown_resolves():
    broken = []
    for page in [*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, broken


def test_the_command_line_imports_a_sides_modules_only_for_the_command_that_needs_them():
    """Importing the command line loads neither the client nor the server; building its parser
    (``--help``, and every command's start) loads eval's options and the server's settings (the
    flags of ``eval`` and ``serve``), and nothing else of theirs."""
    import subprocess
    import sys

    sides = "sorted(m for m in sys.modules if m.startswith(('service.client', 'service.server', 'losses')))"
    code = f"import sys, service.cli; print({sides}); service.cli.build_parser(); print({sides})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    imported, parsed = run.stdout.splitlines()
    assert imported == "[]", imported
    options = ["service.client", "service.client.eval", "service.client.eval.options", "service.client.eval.presets"]
    assert parsed == str([*options, "service.server", "service.server.settings"]), parsed
