"""The committed CRD is what the models generate (run `make crds` after changing them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from phasegate.api import crd

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "crds" / "phasegate.dev_tradingstrategies.yaml"
CHART_COPY = ROOT / "charts" / "phasegate" / "crds" / "phasegate.dev_tradingstrategies.yaml"


def test_committed_crd_matches_the_models():
    assert COMMITTED.read_text() == crd.render(), "crds/ drifted from operator/phasegate/api: run `make crds`"


def test_chart_ships_the_same_crd():
    assert CHART_COPY.read_text() == COMMITTED.read_text(), "charts/phasegate/crds drifted: run `make crds`"


def test_crd_shape():
    doc = yaml.safe_load(COMMITTED.read_text())
    version = doc["spec"]["versions"][0]
    assert doc["metadata"]["name"] == "tradingstrategies.phasegate.dev"
    assert version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert cols == ["Phase", "State", "Fraction", "Ready", "Reason", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) >= {"capital", "account", "maxFraction", "template"}
    # The default plan is stored with the object, so an operator upgrade cannot change it.
    assert [p["name"] for p in spec["properties"]["phases"]["default"]] == [
        "backtest", "paper", "shadow", "live-10", "live-35", "live-65", "live-100"
    ]


def test_every_status_field_is_declared():
    """A structural schema drops undeclared status fields: every model field must be there."""
    from phasegate.api import StrategyStatus

    doc = yaml.safe_load(COMMITTED.read_text())
    status = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for name, field in StrategyStatus.model_fields.items():
        assert (field.alias or name) in status
