"""``kernel-emulator`` command line (also ``python -m kernel_provider.testing``).

The flags are derived from :class:`~kernel_provider.testing.config.EmulatorConfig`'s fields; only ``--url-file``
and ``--quiet`` (about this process, not the emulator) are declared here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kernel_provider.testing.access import TOKEN_ENV
from kernel_provider.testing.config import EmulatorConfig, build_config_parser

#: The modules of the ``[emulator]`` extra the server needs.
EXTRA_MODULES = ("starlette", "uvicorn", "sse_starlette")
MISSING_EXTRA_MESSAGE = (
    "kernel-emulator: error: the emulator needs the optional dependencies starlette, uvicorn and sse-starlette "
    "(missing: {missing}).\n  install airflow-provider-kernel[emulator]"
)
#: What ``--app`` says when the app file imports a module this environment lacks.
APP_IMPORT_MESSAGE = (
    "kernel-emulator: error: an --app file could not be imported: {error}.\n  install {name!r} in this "
    "environment (Kernel's SDK, 'kernel', comes with airflow-provider-kernel[emulator])"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``kernel-emulator`` argument parser: one flag per :class:`~.config.EmulatorConfig` field, plus its own."""
    parser = argparse.ArgumentParser(
        prog="kernel-emulator",
        description="Local emulator of the Kernel (kernel.sh) invocation API, with fault injection. Every route "
        f"needs the token (--token, or {TOKEN_ENV}); requests must name it by a loopback Host (or the bound "
        "host, or an --allow-host).",
    )
    build_config_parser(parser)
    parser.add_argument("--url-file", metavar="PATH", help="write the base URL to this file once listening")
    parser.add_argument("--quiet", action="store_true", help="only print the listening line")
    return parser


def missing_extra() -> list[str]:
    """The ``[emulator]`` extra's modules that cannot be imported."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGTERM/SIGINT; exit 0 on a clean shutdown, 2 on bad options or a missing extra."""
    args = build_parser().parse_args(argv)
    missing = missing_extra()
    if missing:
        print(MISSING_EXTRA_MESSAGE.format(missing=", ".join(missing)), file=sys.stderr, flush=True)
        return 2
    if "tokens" not in vars(args) and os.environ.get(TOKEN_ENV):
        args.tokens = [os.environ[TOKEN_ENV]]
    from kernel_provider.testing.server import KernelEmulator

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        emulator = KernelEmulator(EmulatorConfig.from_namespace(args))
        emulator.start()
    except (ValueError, OSError) as exc:
        print(f"kernel-emulator: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except ImportError as exc:  # an --app file imports what this environment lacks: say what, not a traceback
        print(APP_IMPORT_MESSAGE.format(error=exc, name=exc.name), file=sys.stderr, flush=True)
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
