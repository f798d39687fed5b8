"""`python -m phasegate.sdk.demo`: the demo momentum strategy under the pod contract.

The operator sets the PHASEGATE_* contract variables. The demo's own knobs come from
flags, or from environment variables when run by hand (a TradingStrategy cannot set
PHASEGATE_* variables in spec.template.env, so use args there):

    --seed N          PHASEGATE_DEMO_SEED          synthetic market seed (default 7)
    --bar-seconds S   PHASEGATE_DEMO_BAR_SECONDS   wall-clock seconds per bar (default 0.2)
    --crash-after S   PHASEGATE_DEMO_CRASH_AFTER   crash the market S seconds after start

While it runs: GET /metrics, GET /healthz, POST /demo/crash on the metrics port.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from phasegate.sdk.runtime import EXIT_CONFIG, main

from .app import DEFAULT_BAR_SECONDS, DEFAULT_SEED, DemoSettings, build_app

ENV_SEED = "PHASEGATE_DEMO_SEED"
ENV_BAR_SECONDS = "PHASEGATE_DEMO_BAR_SECONDS"
ENV_CRASH_AFTER = "PHASEGATE_DEMO_CRASH_AFTER"


def _number(text: str, name: str, kind: type, minimum: float, strict: bool) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value) or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name}={text!r} must be {bound}")
    return value


def settings_from(argv: list[str], environ: dict[str, str]) -> DemoSettings:
    parser = argparse.ArgumentParser(prog="python -m phasegate.sdk.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", default=environ.get(ENV_SEED, str(DEFAULT_SEED)))
    parser.add_argument("--bar-seconds", default=environ.get(ENV_BAR_SECONDS, str(DEFAULT_BAR_SECONDS)))
    parser.add_argument("--crash-after", default=environ.get(ENV_CRASH_AFTER) or None)
    args = parser.parse_args(argv)
    crash_after = args.crash_after
    return DemoSettings(
        seed=int(_number(args.seed, "--seed / " + ENV_SEED, int, 0, strict=False)),
        bar_seconds=float(_number(args.bar_seconds, "--bar-seconds / " + ENV_BAR_SECONDS, float, 0, strict=True)),
        crash_after=None if crash_after is None
        else float(_number(crash_after, "--crash-after / " + ENV_CRASH_AFTER, float, 0, strict=False)),
    )


def run(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from(sys.argv[1:] if argv is None else argv, dict(os.environ))
    except ValueError as exc:
        print(f"phasegate demo refuses to start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return main(build_app(settings))


if __name__ == "__main__":
    sys.exit(run())
