"""The `helm` binary the tests use, and what happens when there is none.

Found as $PHASEGATE_HELM, on PATH, or in the cache hack/install-helm.sh builds into
(${PHASEGATE_CACHE:-~/.cache/phasegate}/bin/helm). Without one, a helm test skips on a
developer's machine but FAILS under `make test` / `make test-e2e` (which build helm and set
PHASEGATE_REQUIRE_HELM=1) and in CI (CI=true): there a skip would hide that the chart was
never linted, rendered or installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytest


def find_helm() -> Optional[str]:
    cache = Path(os.environ.get("PHASEGATE_CACHE") or Path.home() / ".cache" / "phasegate")
    for candidate in (os.environ.get("PHASEGATE_HELM"), shutil.which("helm"), str(cache / "bin" / "helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def helm_required() -> bool:
    return os.environ.get("PHASEGATE_REQUIRE_HELM", "") == "1" or os.environ.get("CI", "").lower() == "true"


def require_helm() -> str:
    """The helm binary; skips the test when there is none, unless helm is required (then fails)."""
    helm = find_helm()
    if helm is not None:
        return helm
    why = "no helm binary: hack/install-helm.sh (or `make helm`) builds one"
    if helm_required():
        pytest.fail(f"{why}; PHASEGATE_REQUIRE_HELM=1 or CI=true, so this test may not skip", pytrace=False)
    pytest.skip(why)
