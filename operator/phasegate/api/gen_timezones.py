"""Writes operator/phasegate/api/timezones.py from the installed `tzdata` package.

Run `python -m phasegate.api.gen_timezones` (then `make crds`) after raising the tzdata
pin in pyproject.toml. The names come from the tzdata package's own list of zones, never
from `zoneinfo.available_timezones()`: that one also reads the machine's /usr/share/zoneinfo,
so it differs from one machine to the next (and lists non-zones such as `localtime`,
`posix/...` and `right/...`).
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

# Not a time zone: the tz database's placeholder for "local time not yet configured".
EXCLUDED = {"Factory"}

TARGET = Path(__file__).with_name("timezones.py")


def zone_names() -> tuple[str, list[str]]:
    import tzdata

    names = importlib.resources.files("tzdata").joinpath("zones").read_text().split()
    return tzdata.IANA_VERSION, sorted(set(names) - EXCLUDED)


def render() -> str:
    version, names = zone_names()
    lines = [
        '"""IANA time zone names that spec.tradingDay.timeZone accepts. GENERATED: do not edit.',
        "",
        "Written by `python -m phasegate.api.gen_timezones` from the tzdata package (IANA",
        f"release {version}). The model accepts exactly these names, and the CRD lists them as",
        "the field's `enum`, so the apiserver and `StrategySpec.model_validate` agree on every",
        "time zone. A committed list, not `zoneinfo.available_timezones()` at `make crds` time:",
        "that reads the OS's tz database too, which differs between machines and would make the",
        "generated CRD differ with them. Every name here loads with zoneinfo wherever phasegate",
        "is installed, because the tzdata package is one of its dependencies (the fallback when",
        "the OS has no tz database, or an older one). IANA never removes a name (old ones live",
        "on as links), so a newer tzdata can only add names: regenerate to accept them.",
        '"""',
        "",
        f'IANA_VERSION = "{version}"',
        "",
        "TIME_ZONES: tuple[str, ...] = (",
        *(f'    "{n}",' for n in names),
        ")",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    TARGET.write_text(render())
    sys.stderr.write(f"wrote {TARGET} ({len(zone_names()[1])} names)\n")
