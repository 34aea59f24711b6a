"""``loss-service``: serve, weights, eval, filter, report, score and bench.

This module imports neither torch nor the server at import time, so the client-only install
can run ``eval`` and ``score --url``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from .common.arguments import add_ray_arguments, add_scoring_server_arguments, json_object_argument, number
from .common.errors import comma_list
from .common.protocol import DEFAULT_METRICS, IMAGE_ROLES

DEFAULT_METRICS_ARG = ",".join(DEFAULT_METRICS)
# The packages each optional extra adds that its commands import (pyproject.toml's extras).
EXTRA_PACKAGES = {
    "server": ("torch", "torchvision", "timm", "fastapi", "uvicorn", "pydantic_settings", "imagecodecs"),
    "report": ("matplotlib", "scipy"),
    "ray": ("ray", "pyarrow", "pandas"),
}


class CommandFailed(Exception):
    """A failure the user can act on, printed as one line instead of a traceback. ``code`` 2: what
    was given is refused (as argparse and ``report`` refuse); 1: the environment failed."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def require_extra(extra: str, command: str) -> None:
    """One line naming the extra to install, instead of a traceback from the first failed import."""
    missing = [name for name in EXTRA_PACKAGES[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandFailed(f"{command} needs the {extra} extra ({', '.join(missing)} missing): pip install 'loss-service[{extra}]'", 2)


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; unset flags fall back to LOSS_SERVICE_<NAME> or the default."""
    try:
        from .server.settings import Settings
    except ImportError:  # the client-only install: `serve` explains what to install
        parser.description = "needs the server extra: pip install 'loss-service[server]'"
        return

    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"LOSS_SERVICE_{name.upper()}"
        help_text = f"{info.description} (env {env}; default {info.default})"
        if info.annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)


# libgomp keeps an OpenMP worker spinning ~9 ms after each parallel region by default (300,000
# spins), holding a CPU while the next request is received and decoded; 30,000 spins (~1 ms)
# still bridge the gaps inside a forward pass (0–2 sleeps per pass) and free the CPU after it.
# It must be in the environment before torch loads libgomp; one set by the user is kept.
SERVER_OPENMP_ENVIRONMENT = {"GOMP_SPINCOUNT": "30000"}


def serve(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal

    from .server.allocator import keep_freed_memory

    for name, value in SERVER_OPENMP_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    allocator = keep_freed_memory()  # before any thread exists (allocator.py)
    require_extra("server", "serve")
    import uvicorn

    from .server.app import create_app
    from .server.settings import Settings

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    settings = Settings(**given)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("loss_service").info(allocator)
    # uvicorn re-raises SIGTERM after its graceful shutdown so that the default action kills the
    # process (status -15); with this no-op as the handler it restores, a drained server exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.keep_alive_s,
        log_level="info",
    )
    return 0


def _chosen_files(models: str | None) -> list:
    """The weight files of the named backbones or weight files (``--models vgg16,lpips_vgg_heads``); all by default."""
    import losses.registry  # noqa: F401 - declares every weight file
    from losses.nets.backbones import BACKBONES
    from losses.nets.weights import WEIGHT_FILES

    names = comma_list(models)
    unknown = [name for name in names if name not in BACKBONES and name not in WEIGHT_FILES]
    if unknown:
        raise CommandFailed(f"unknown model(s) {unknown}; valid: {sorted(set(BACKBONES) | set(WEIGHT_FILES))}", 2)
    chosen = [BACKBONES[name].weights if name in BACKBONES else WEIGHT_FILES[name] for name in names]
    return list(dict.fromkeys(chosen or WEIGHT_FILES.values()))


def weights_fetch(args: argparse.Namespace) -> int:
    require_extra("server", "weights fetch")
    from losses.nets import weights as W

    target = args.weights_dir or W.default_weights_dir()
    for spec in _chosen_files(args.models):
        existing = W.find_weights(spec, target)
        if existing is not None and W.checksum_status(spec, existing) != "mismatch":
            print(f"{spec.name}: present at {existing}")
            continue
        print(f"{spec.name}: downloading {W.source_url(spec)} → {target}")
        try:
            path = W.download(spec, target)
        except W.WeightsError as exc:
            raise CommandFailed(str(exc), 1) from None
        print(f"{spec.name}: {path} ({W.checksum_status(spec, path)})")
    return 0


def weights_list(args: argparse.Namespace) -> int:
    require_extra("server", "weights list")
    from rich.console import Console
    from rich.table import Table

    from losses.nets import weights as W

    table = Table("weights", "status", "file", "size", "checksum", "sha256")
    searched: list = []
    for spec in _chosen_files(None):
        path = W.find_weights(spec, args.weights_dir)
        if path is None:
            searched += [d for d in W.search_dirs(spec, args.weights_dir) if d not in searched]
            table.add_row(spec.name, "[red]missing[/red]", " or ".join(spec.filenames), "", "", spec.sha256_prefix or "")
        else:
            status = W.checksum_status(spec, path)
            size = path.stat().st_size
            table.add_row(
                spec.name,
                "present",
                str(path),
                f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB",
                status,
                W.file_sha256(path),
            )
    Console(width=400).print(table)
    if searched:
        print(f"fetch missing weights with: {W.FETCH_COMMAND} (looked in: {', '.join(str(d) for d in searched)})")
    return 0


def with_scoring_server(command: str, urls, metrics: list[str], args: argparse.Namespace, run) -> int:
    """``run(urls)`` against the servers given with ``--url``, or else against the server's own app
    started in this process on a loopback port (the server extra) for the run."""
    if urls:
        return run(list(urls))
    require_extra("server", f"{command} without --url")
    from .embedded import embedded_server

    with embedded_server(metrics, args.device, args.weights_dir, args.random_weights) as url:
        return run([url])


def evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .client.eval import EvalOptions, run

    options = EvalOptions.from_arguments(args)
    if options.ray is not None:
        return evaluate_on_ray(options, args)
    backend = "server" if options.url else "in-process"
    return with_scoring_server(
        "eval", options.url, options.metric_names, args, lambda urls: run(replace(options, url=tuple(urls), backend=backend))
    )


def check_ray_command(command: str, urls) -> None:
    """``--ray``: the actors call the library, so no server runs (``--url`` is refused) and both
    the server and ray extras must be installed."""
    if urls:
        raise CommandFailed("--ray scores in Ray actors, not through a server: leave out --url", 2)
    require_extra("server", f"{command} --ray")
    require_extra("ray", f"{command} --ray")


def evaluate_on_ray(options, args: argparse.Namespace) -> int:
    check_ray_command("eval", options.url)
    from rich.console import Console

    from .cluster import run

    return run(options, Console(stderr=True), args.weights_dir, args.random_weights)


def curate(args: argparse.Namespace) -> int:
    from .client.curate import RuleError, parse_rule, run_filter, through_servers

    try:
        metrics = list(parse_rule(args.keep).metrics)
    except RuleError as exc:
        raise CommandFailed(str(exc), 2) from None
    if args.ray is not None:
        check_ray_command("filter", args.url)
        from .cluster.filtering import on_ray

        return run_filter(args, on_ray(args))
    return with_scoring_server("filter", args.url, metrics, args, lambda urls: run_filter(args, through_servers(args, urls)))


def score_local(args: argparse.Namespace) -> dict:
    """Score one triplet in-process through the server's own engine (needs the server extra):
    the same plan, checks, ``losses`` call and answer as ``POST /v1/score``, without HTTP."""
    require_extra("server", "score --local")
    from losses.nets.weights import WeightsError

    from .common.decode import decode
    from .common.errors import ServiceError
    from .server.scoring import Scorer
    from .server.settings import EngineConfig

    if reserved := sorted({"metrics", "device", "pretrained", "weights_dir"} & set(args.options or {})):
        raise CommandFailed(f"--options holds metric options only (e.g. crop_border); {reserved} are flags of their own", 2)
    scorer = Scorer(EngineConfig(device="cpu", pretrained=not args.random_weights, weights_dir=args.weights_dir))
    try:
        plan = scorer.plan(args.metrics, json.dumps(args.options or {}), check_models=False)
        decoded = {role: decode(_read(getattr(args, role)), role) for role in IMAGE_ROLES if getattr(args, role)}
        job = scorer.job(plan, decoded)
        (values,) = scorer.run_batch(job.key, [job])
    except ServiceError as exc:
        raise CommandFailed(str(exc), 2) from None
    except WeightsError as exc:
        raise CommandFailed(str(exc), 1) from None
    return {**scorer.encode(job, values), "conventions": scorer.conventions(plan)}


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CommandFailed(f"{path}: {exc.strerror}", 2) from None


def score(args: argparse.Namespace) -> int:
    if args.local:
        result = score_local(args)
    else:
        from .client import LossClient

        with LossClient(args.url, api_key=args.api_key) as client:
            try:
                result = client.score(args.sr, args.gt, args.lr, args.teacher, args.metrics, **(args.options or {}))
            except OSError as exc:  # an image path that cannot be read
                raise CommandFailed(f"{exc.filename}: {exc.strerror}", 2) from None
    if args.as_json:
        print(json.dumps(result, indent=2))
    else:
        width = max(map(len, result["scores"]))
        for name, value in result["scores"].items():
            print(f"{name:<{width}}  {'null' if value is None else value}")  # null: see the warning
        for warning in result.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def report(args: argparse.Namespace) -> int:
    require_extra("report", "report")
    from .client.report import run_report

    return run_report(args)


def run_bench(args: argparse.Namespace) -> int:
    require_extra("server", "bench")
    from .bench import run

    return run(args)


def _serve_parser(commands) -> None:
    """``serve``: one flag per server setting."""
    serve_parser = commands.add_parser("serve", help="run the scoring server")
    _settings_flags(serve_parser)
    serve_parser.set_defaults(func=serve)


def _weights_parser(commands) -> None:
    """``weights fetch`` and ``weights list``."""
    weights = commands.add_parser("weights", help="fetch or list pretrained backbone weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    fetch = weights_commands.add_parser("fetch", help="download weights (checksum-verified) into the weights dir")
    fetch.add_argument("--models", default=None, help="comma list of backbones or weight files (default: all; `weights list` names them)")
    fetch.add_argument("--weights-dir", default=None, help="target dir (default: $LOSS_SERVICE_WEIGHTS_DIR or $TORCH_HOME/hub/checkpoints)")
    fetch.set_defaults(func=weights_fetch)
    listing = weights_commands.add_parser("list", help="show which weights are present, their size and checksum status")
    listing.add_argument("--weights-dir", default=None)
    listing.set_defaults(func=weights_list)


def _eval_parser(commands) -> None:
    """``eval``: folders of SR/GT(/LR) images scored through a server, or in-process without ``--url``."""
    from .client.eval.options import add_eval_arguments

    ev = commands.add_parser(
        "eval",
        help="score folders of SR/GT(/LR) images, or of clips (sub-folders of frames, or videos), through a server or in-process; "
        "CSV + JSON + summary",
    )
    add_eval_arguments(ev)
    ev.set_defaults(func=evaluate)


def _filter_parser(commands) -> None:
    """``filter``: keep the images whose no-reference scores pass a rule; a manifest of every file."""
    keep = commands.add_parser(
        "filter",
        help="keep the images whose no-reference scores pass a rule (e.g. 'niqe < 5 and clipiqa > 0.6'); "
        "a CSV manifest of every file: kept, dropped or unreadable",
    )
    keep.add_argument("paths", nargs="*", help="folders of images (not recursive) and image files")
    keep.add_argument("--files-from", default=None, metavar="LIST", help="a text file naming one image per line")
    keep.add_argument(
        "--keep",
        required=True,
        help="the rule: metric comparisons (<, <=, >, >=, ==, !=) joined by and, or, not and parentheses; "
        "no-reference metrics only (niqe, clipiqa); parsed, never run as code",
    )
    keep.add_argument("--manifest", default="manifest.csv", help="CSV of every file, its decision, scores and error (default manifest.csv)")
    keep.add_argument("--json", default=None, help="also write the counts (kept, dropped, unreadable) as JSON here")
    keep.add_argument(
        "--resume",
        action="store_true",
        help="reuse the scores in --manifest (files kept or dropped there); decide them anew under this rule",
    )
    keep.add_argument(
        "--options", type=json_object_argument, default=None, help='metric options as a JSON object, e.g. {"prompts": "sharpness"}'
    )
    add_scoring_server_arguments(keep, "filter")
    keep.add_argument("--concurrency", type=number(int, 1), default=8, help="requests in flight (default 8)")
    keep.add_argument("--api-key", default=None, help="bearer token")
    keep.add_argument("--timeout", type=number(float, 0, above=True), default=120.0, help="seconds per request")
    keep.add_argument("--quiet", action="store_true", help="no progress bar")
    add_ray_arguments(keep, "the files")
    keep.set_defaults(func=curate)


def _score_parser(commands) -> None:
    """``score``: one triplet, through a server or in-process."""
    one = commands.add_parser("score", help="score one triplet and print the scores")
    one.add_argument("sr", help="SR image (PNG, JPEG, BMP, TIFF, WebP or .npy)")
    one.add_argument("gt", nargs="?", help="ground truth, same size as sr (every metric but niqe needs it)")
    one.add_argument("lr", nargs="?", help="low-resolution input (metrics lr_psnr, clp_*)")
    one.add_argument("--teacher", help="teacher output, same size as sr (metric kd)")
    one.add_argument("--metrics", default=DEFAULT_METRICS_ARG, help=f"comma list (default {DEFAULT_METRICS_ARG})")
    one.add_argument("--options", type=json_object_argument, default=None, help='metric options as a JSON object, e.g. {"crop_border": 4}')
    where = one.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", action="append", help="score through a server")
    where.add_argument("--local", action="store_true", help="score in-process with the library (server extra)")
    one.add_argument("--api-key", default=None, help="with --url: the server's API key")
    one.add_argument("--weights-dir", default=None, help="with --local")
    one.add_argument("--random-weights", action="store_true", help="with --local: explicit opt-in to random weights")
    one.add_argument("--json", dest="as_json", action="store_true", help="print the full JSON response")
    one.set_defaults(func=score)


def _bench_parser(commands) -> None:
    """``bench``: throughput, latency, peers and memory."""
    bench = commands.add_parser("bench", help="measure throughput, latency, SSIM/PSNR vs peers and memory; table + JSON")
    bench.add_argument("--quick", action="store_true", help="small sizes, counts and timing windows (a minute or two on a CPU)")
    bench.add_argument("--json", default="bench-results.json", help="where to write the JSON (default bench-results.json)")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda")
    bench.add_argument("--sections", default="inprocess,service,peers,memory", help="comma list of sections to run")
    bench.add_argument("--sizes", default=None, help="comma list of square image sizes (default 256,512; --quick 256)")
    bench.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8,32; --quick 1,8)")
    bench.add_argument("--quiet", action="store_true", help="no per-measurement log lines")
    bench.add_argument("--memory-metrics", default=None, help="comma list for the memory section (default: every metric)")
    bench.add_argument(
        "--write-costs",
        default=None,
        metavar="PATH",
        help="write the measured bytes per pixel per metric here (the server reads service/server/memory_costs.json)",
    )
    bench.set_defaults(func=run_bench)


def _report_parser(commands) -> None:
    """``report``: eval JSON files into HTML, Markdown and LaTeX."""
    rep = commands.add_parser(
        "report", help="combine eval JSON files into an HTML report (plots, paired tests, worst images), Markdown and LaTeX tables"
    )
    rep.add_argument("results", nargs="*", help="eval JSON files (models × datasets × scales)")
    rep.add_argument("--store", default=None, metavar="DB", help="a results store (eval --store): adds the conventions-aware leaderboard")
    rep.add_argument("--html", default=None, help="self-contained HTML report path (opens offline)")
    rep.add_argument("--markdown", default=None, help="Markdown table path")
    rep.add_argument("--latex", default=None, help="LaTeX (booktabs) table path")
    rep.add_argument("--metrics", default=None, help="comma list of metrics to report (default: every metric in the results)")
    rep.add_argument("--x", default=None, help="x axis of the perception–distortion plot (default psnr)")
    rep.add_argument(
        "--y",
        default=None,
        help="y axis of the perception–distortion plot (default niqe, lpips_alex, lpips_vgg, dists or perceptual: the first reported)",
    )
    rep.add_argument(
        "--worst",
        type=number(int, 0),
        default=3,
        help="worst images shown per metric and model, over its datasets (default 3; 0: no gallery)",
    )
    rep.add_argument("--crop", type=number(int, 1), default=128, help="side of the gallery crops in pixels (default 128)")
    rep.add_argument("--seed", type=number(int, 0), default=0, help="bootstrap seed (default 0)")
    rep.add_argument("--resamples", type=number(int, 1), default=None, help="bootstrap resamples (default 2000, the report's own)")
    rep.add_argument("--title", default="Model comparison", help="page title")
    rep.set_defaults(func=report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loss-service", description="Exact SR losses and metrics: server, library tools and client.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_serve_parser, _weights_parser, _eval_parser, _filter_parser, _score_parser, _bench_parser, _report_parser):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .client import BadRequest, LossServiceError

    try:
        return args.func(args)
    except CommandFailed as exc:
        failure, code = str(exc), exc.code
    except LossServiceError as exc:  # the server refused (4xx) or could not be reached or answered 5xx
        failure, code = str(exc), 2 if isinstance(exc, BadRequest) else 1
    print(f"loss-service {args.command}: error: {failure}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
