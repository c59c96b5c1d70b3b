"""``kernel-emulator`` command line (also ``python -m kernel_provider.testing``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernel-emulator",
        description="Local emulator of the Kernel (onkernel.com) invocation API, with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument(
        "--token", action="append", default=[], help="accepted API token (repeatable; default test-token)"
    )
    parser.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="FILE",
        help="Python file defining Kernel apps (kernel.App / @app.action); repeatable",
    )
    parser.add_argument(
        "--app-version",
        action="append",
        default=[],
        metavar="LABEL",
        help="version label(s) the --app apps are deployed under (default latest)",
    )
    parser.add_argument(
        "--demo-version",
        action="append",
        default=[],
        metavar="LABEL",
        help="version label(s) of the built-in demo app (default latest)",
    )
    parser.add_argument("--faults", metavar="FILE", help="fault plan JSON file")
    parser.add_argument("--seed", type=int, help="seed for fault rates when the plan has none")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="SSE heartbeat interval in seconds (<60)")
    parser.add_argument("--sync-timeout", type=float, default=100.0, help="cap for synchronous invocations (s)")
    parser.add_argument("--org-concurrency", type=int, help="max live invocations per org (default unlimited)")
    parser.add_argument("--app-concurrency", type=int, help="max live invocations per app (default unlimited)")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on concurrency 429s")
    parser.add_argument(
        "--unknown-project",
        action="append",
        default=[],
        metavar="ID",
        help="project id answered with 404 project_not_found (repeatable)",
    )
    parser.add_argument("--url-file", metavar="PATH", help="write the base URL to this file once listening")
    parser.add_argument("--quiet", action="store_true", help="only print the listening line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGTERM/SIGINT; exit 0 on a clean shutdown."""
    args = build_parser().parse_args(argv)
    from kernel_provider.testing.server import KernelEmulator

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        emulator = KernelEmulator(
            host=args.host,
            port=args.port,
            tokens=args.token or None,
            apps=args.app,
            app_versions=args.app_version or ("latest",),
            demo_versions=args.demo_version or ("latest",),
            faults=Path(args.faults) if args.faults else None,
            seed=args.seed,
            heartbeat=args.heartbeat,
            sync_timeout=args.sync_timeout,
            org_concurrency=args.org_concurrency,
            app_concurrency=args.app_concurrency,
            retry_after=args.retry_after,
            unknown_projects=args.unknown_project,
        )
        emulator.start()
    except (ValueError, OSError) as exc:
        print(f"kernel-emulator: error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.url_file:
        tmp = f"{args.url_file}.tmp{os.getpid()}"
        Path(tmp).write_text(emulator.url + "\n")
        os.replace(tmp, args.url_file)
    print(f"Kernel emulator listening on {emulator.url}", flush=True)
    if not args.quiet:
        apps = sorted({f"{a}@{v}" for a, v in emulator.store.registry.versions})
        print(f"  apps: {', '.join(apps)}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            if not emulator.running:
                print("kernel-emulator: server thread died", file=sys.stderr, flush=True)
                return 1
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
