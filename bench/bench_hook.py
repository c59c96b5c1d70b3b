"""1,000 ``get_invocation`` calls: KernelHook vs a bare requests.Session vs the official SDK's sync client.

Run: ``make bench`` or ``python -m bench.bench_hook [--calls 1000]``. Goal: hook >= 0.9x the bare session's
throughput and >= 2x the SDK's.
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

from bench.common import emulator, table, timed_rounds


def run(calls: int = 1000) -> dict[str, float]:
    from kernel import Kernel

    from kernel_provider.hooks.kernel import KernelHook

    with emulator() as emu:
        hook = KernelHook()
        invocation_id = hook.invoke("demo", "echo", payload={"bench": True}, invoke_async=False).id
        session = requests.Session()
        headers = {"Authorization": f"Bearer {emu.token}", "Accept": "application/json"}
        url = f"{emu.url}/invocations/{invocation_id}"
        sdk = Kernel(api_key=emu.token, base_url=emu.url)

        def bare() -> None:
            response = session.get(url, headers=headers, timeout=30)
            response.raise_for_status()
            response.json()

        subjects = {
            "requests.Session (bare)": bare,
            "KernelHook.get_invocation": lambda: hook.get_invocation(invocation_id),
            "kernel SDK invocations.retrieve": lambda: sdk.invocations.retrieve(invocation_id),
        }
        for fn in subjects.values():  # warm up connections and caches
            for _ in range(20):
                fn()
        seconds = timed_rounds(subjects, calls)
    bare, hook_t, sdk_t = (
        seconds["requests.Session (bare)"],
        seconds["KernelHook.get_invocation"],
        seconds["kernel SDK invocations.retrieve"],
    )
    return {
        "calls": calls,
        "bare_ms": bare[0] * 1000,
        "hook_ms": hook_t[0] * 1000,
        "sdk_ms": sdk_t[0] * 1000,
        "bare_cpu_ms": bare[1] * 1000,
        "hook_cpu_ms": hook_t[1] * 1000,
        "sdk_cpu_ms": sdk_t[1] * 1000,
        "hook_vs_bare": bare[0] / hook_t[0],
        "hook_vs_sdk": sdk_t[0] / hook_t[0],
        "hook_vs_sdk_cpu": sdk_t[1] / hook_t[1],
        "hook_vs_bare_cpu": bare[1] / hook_t[1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.calls)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"get_invocation x {args.calls} against the emulator (median of 5 interleaved rounds)")
    print(
        table(
            ["client", "wall ms/call", "client CPU ms/call"],
            [
                ["requests.Session (bare)", result["bare_ms"], result["bare_cpu_ms"]],
                ["KernelHook", result["hook_ms"], result["hook_cpu_ms"]],
                ["kernel SDK (sync)", result["sdk_ms"], result["sdk_cpu_ms"]],
            ],
        )
    )
    print(
        f"hook throughput = {result['hook_vs_bare']:.2f}x bare session (goal >= 0.9), "
        f"{result['hook_vs_sdk']:.2f}x SDK (goal >= 2); client CPU per call: SDK/hook = "
        f"{result['hook_vs_sdk_cpu']:.2f}x, bare/hook = {result['hook_vs_bare_cpu']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
