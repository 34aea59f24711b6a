"""``loss-service``: serve, weights, eval, score and bench.

This module imports neither torch nor the server at import time, so the client-only install
can run ``eval`` and ``score --url``.
"""

from __future__ import annotations

import argparse
import sys


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; unset flags fall back to LOSS_SERVICE_<NAME> or the default."""
    from .settings import Settings

    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"LOSS_SERVICE_{name.upper()}"
        help_text = f"{info.description} (env {env}; default {info.default})"
        if info.annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)


def serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    import uvicorn

    from .app import create_app
    from .settings import Settings

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    settings = Settings(**given)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn re-raises SIGTERM after its graceful shutdown so that the default action kills the
    # process (status -15); with this no-op as the handler it restores, a drained server exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, timeout_graceful_shutdown=30, log_level="info")
    return 0


def weights_fetch(args: argparse.Namespace) -> int:
    from losses import weights as W

    target = args.weights_dir or W.default_weights_dir()
    for name in args.models.split(","):
        spec = W.WEIGHT_SPECS[name]
        existing = W.find_weights(spec, target)
        if existing is not None and W.checksum_status(spec, existing) != "mismatch":
            print(f"{name}: present at {existing}")
            continue
        print(f"{name}: downloading {spec.url} → {target}")
        path = W.download(spec, target)
        print(f"{name}: {path} ({W.checksum_status(spec, path)})")
    return 0


def weights_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from losses import weights as W

    table = Table("model", "status", "file", "size", "checksum")
    missing = 0
    for name, spec in W.WEIGHT_SPECS.items():
        path = W.find_weights(spec, args.weights_dir)
        if path is None:
            missing += 1
            table.add_row(name, "[red]missing[/red]", " or ".join(spec.filenames), "", "")
        else:
            status = W.checksum_status(spec, path)
            table.add_row(name, "present", str(path), f"{path.stat().st_size / 2**20:.1f} MiB", status)
    Console().print(table)
    if missing:
        print(f"fetch missing weights with: uv run loss-service weights fetch (looked in: "
              f"{', '.join(str(d) for d in W.search_dirs(next(iter(W.WEIGHT_SPECS.values())), args.weights_dir))})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loss-service", description="Exact SR losses and metrics: server, library tools and client.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the scoring server")
    _settings_flags(serve_parser)
    serve_parser.set_defaults(func=serve)

    weights = commands.add_parser("weights", help="fetch or list pretrained backbone weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    fetch = weights_commands.add_parser("fetch", help="download weights (checksum-verified) into the weights dir")
    fetch.add_argument("--models", default="vgg16,vgg19,dinov2", help="comma list (default: all)")
    fetch.add_argument("--weights-dir", default=None, help="target dir (default: $LOSS_SERVICE_WEIGHTS_DIR or $TORCH_HOME/hub/checkpoints)")
    fetch.set_defaults(func=weights_fetch)
    listing = weights_commands.add_parser("list", help="show which weights are present, their size and checksum status")
    listing.add_argument("--weights-dir", default=None)
    listing.set_defaults(func=weights_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
