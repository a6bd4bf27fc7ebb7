"""The model spec: one typed definition, numpy-free, versioned; unknown, missing or mistyped fields refused."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from models import spec as M
from models.calibration import Calibration


def recommender(**change: object) -> M.ServedRecommender:
    base = M.ServedRecommender(
        model_config=M.SASRecConfig(n_items=20, d_model=16),
        type_names=("view", "order"),
        channel_names=("web", "store"),
        side_features=("event_type",),
        category_names=("a", "b"),
        k=10,
        exclude_seen=True,
        max_k=20,
        masked_below=-5e8,
        run_config={"name": "r"},
    )
    return dataclasses.replace(base, **change)


def intent() -> M.ServedIntent:
    return M.ServedIntent(
        model_config=M.IntentConfig(n_items=20, n_features=2, n_event_types=5),
        type_names=("view",),
        channel_names=(),
        side_features=("event_type",),
        category_names=(),
        target="churn",
        feature_names=("recency_days", "n_events_7d"),
        calibration=Calibration("isotonic", 1.0, (0.1, 0.5), (0.2, 0.6)),
        run_config={},
    )


def test_the_spec_module_imports_no_torch() -> None:
    code = "import sys, models.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("make", [recommender, intent])
def test_a_spec_round_trips_through_json(make) -> None:  # type: ignore[no-untyped-def]
    spec = make()
    assert M.parse_served(M.to_json(spec)) == spec
    assert M.to_json(spec)["spec_version"] == M.SPEC_VERSION


def test_the_run_spec_is_the_served_spec_without_the_graph() -> None:
    run = M.RecommenderSpec(
        **{f.name: getattr(recommender(), f.name) for f in dataclasses.fields(M.RecommenderSpec)}
    )
    assert M.parse_run(M.to_json(run)) == run
    with pytest.raises(M.SpecError, match="max_k: unknown field"):
        M.parse_run(M.to_json(recommender()))  # a bundle's config.json is not a run's model.json


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spec_version": "1.4"}, "spec_version 1.4, this code reads major version 2"),
        ({"spec_version": None}, "no spec_version"),
        ({"nickname": "x"}, "nickname: unknown field"),
        ({"k": None}, "k: Field required"),
        ({"k": "ten"}, "k: Input should be a valid integer"),
        ({"task": "ranker"}, "does not match any of the expected tags"),
        ({"side_features": ["colour"]}, "side_features.0: Input should be"),
        ({"model_config": {"n_items": 20, "d_model": 15, "n_heads": 2}}, "d_model=15 is not divisible"),
        ({"max_k": 21}, "max_k=21 is outside 1..20"),
        ({"outputs": ["scores"]}, "expected \\['item_idx'"),
    ],
)
def test_a_document_of_another_version_or_shape_is_refused(change: dict, message: str) -> None:  # type: ignore[type-arg]
    doc = M.to_json(recommender()) | change
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(M.SpecError, match=message):
        M.parse_served(doc)


def test_net_config_takes_the_run_configs_fields_by_name_and_the_data_sizes() -> None:
    @dataclasses.dataclass
    class Hyper:  # a run config's model section: some fields the network has, some it has not
        max_len: int = 7
        d_model: int = 32
        n_heads: int = 4
        side_features: tuple[str, ...] = ("channel",)
        init_from: str | None = None
        n_items: int = 999  # the data's size wins

    net = M.net_config(M.SASRecConfig, Hyper(), n_items=12, n_channels=3)
    assert net == M.SASRecConfig(n_items=12, max_len=7, d_model=32, n_heads=4, n_channels=3)


def test_role_of_a_model() -> None:
    assert M.role_of(recommender()) == "recommender" and M.role_of(intent()) == "churn"
    with pytest.raises(ValueError, match="'session' intent model"):
        M.role_of(dataclasses.replace(intent(), target="session"))


def test_bundle_entries_must_sit_under_their_role() -> None:
    entry = M.BundleModel(role="intent", run_id="r", inputs=(), outputs=(), parity={"max_abs_diff": 0.0})
    doc = {"version": "v", "created_at": "t", "schema_version": "1.0", "data_manifest": {}}
    bundle = M.to_json(M.BundleSpec(**doc, models={"intent": entry}))
    assert M.parse_bundle(bundle).models["intent"] == entry
    with pytest.raises(M.SpecError, match="role does not match its key"):
        M.parse_bundle(bundle | {"models": {"churn": bundle["models"]["intent"]}})
