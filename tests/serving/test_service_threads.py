"""ONNX Runtime threads per worker: ``O2O_ORT_THREADS`` when set, else the cores shared among BentoML's workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serving.artifact import THREADS_ENV, session_options
from serving.service import SERVICE_NAME, available_cores, ort_threads


@pytest.mark.parametrize(
    ("n_cores", "n_workers", "threads"),
    [(8, 1, 8), (8, 2, 4), (3, 2, 1), (2, 4, 1), (1, 1, 1)],
)
def test_unset_threads_share_the_cores_among_workers(n_cores: int, n_workers: int, threads: int) -> None:
    assert ort_threads({}, n_cores, n_workers) == (threads, "cores/workers")
    assert ort_threads({THREADS_ENV: " "}, n_cores, n_workers) == (threads, "cores/workers")


def test_the_environment_overrides_the_default() -> None:
    assert ort_threads({THREADS_ENV: "3"}, 8, 2) == (3, THREADS_ENV)
    assert ort_threads({THREADS_ENV: "16"}, 2, 1) == (16, THREADS_ENV)  # the operator's call


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_setting_that_is_not_a_whole_number_above_zero_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=THREADS_ENV):
        ort_threads({THREADS_ENV: value}, 2, 1)


def test_sessions_use_the_threads_given_and_do_not_spin_between_calls() -> None:
    opts = session_options(3)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    # a spinning pool holds the cores between calls: the event loop and the clients starve (benchmarks.md)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_available_cores_follow_the_affinity_mask() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert available_cores() == len(os.sched_getaffinity(0)) >= 1


def test_the_worker_count_includes_bentoml_configuration_overrides() -> None:
    script = (
        "from serving.service import O2OService, bentoml_workers\n"
        "O2OService.inject_config()\n"  # what to_asgi does in a worker before the instance is built
        "print(bentoml_workers())\n"
    )
    env = {**os.environ, "BENTOML_CONFIG_OPTIONS": f"services.{SERVICE_NAME}.workers=3"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "3"
    env.pop("BENTOML_CONFIG_OPTIONS")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1"  # the decorator's workers=1


def test_api_routes_are_untraced_unless_tracing_is_asked_for() -> None:
    from serving.service import API_ROUTES, TRACING_ENV, tracing_config

    assert tracing_config({}) == {"excluded_urls": list(API_ROUTES)}
    assert tracing_config({TRACING_ENV: "0"}) == {"excluded_urls": list(API_ROUTES)}
    assert tracing_config({TRACING_ENV: "1"}) == {} == tracing_config({TRACING_ENV: " True "})
