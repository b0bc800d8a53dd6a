"""The executor's per-image stage times, its time limit that stands still while a step waits, and
the critical path a run reports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from buildtool.execute.executor import Result, _Clock
from buildtool.report import timeline
from tests.test_executor import FakeDocker, FakeRegistry, run


def _result(key: str, started: float, ended: float, status: str = "built", **stages: float) -> Result:
    return Result(key=key, repository=key, status=status, started=started, ended=ended, stages=stages)


def test_the_critical_path_follows_the_last_image_back_through_its_parents() -> None:
    results = [_result("root", 0, 10, build=8), _result("a", 5, 20, build=10), _result("b", 6, 12), _result("svc", 15, 31, build=3, push=9),
               _result("other", 0, 30)]  # fmt: skip
    parents = {"root": None, "a": "root", "b": "root", "svc": "a", "other": None}
    chain = timeline.critical_path(results, parents)
    assert [r.key for r in chain] == ["root", "a", "svc"]
    assert timeline.describe(chain) == "critical path (31.0s): root 10.0s, build 8.0s → a 15.0s, build 10.0s → svc 16.0s, push 9.0s"
    # Images found in the registry took no time: the path starts below them.
    cached = [_result("root", 0, 0, status="cached"), _result("a", 0, 4)]
    assert [r.key for r in timeline.critical_path(cached, {"root": None, "a": "root"})] == ["a"]
    assert timeline.critical_path([_result("root", 0, 0, status="cached")], {"root": None}) == []


def test_a_step_time_limit_stands_still_while_the_step_waits_and_runs_while_it_works() -> None:
    expired = threading.Event()
    clock = _Clock(0.6, expired.set)
    clock.run()
    time.sleep(0.2)
    clock.stop()  # waiting for the parent's verdict
    time.sleep(0.8)
    assert not expired.is_set()
    clock.run()
    time.sleep(0.2)
    clock.stop()
    assert not expired.is_set() and 0.35 < clock.spent < 0.6
    clock.run()
    assert expired.wait(2)  # the rest of the limit ran out while working


def test_the_run_report_names_each_stage_and_the_critical_path(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    plan, results = run(fleet_dir, tmp_path, registry, FakeDocker(registry), services=["ServiceRegistry"])
    chain = timeline.critical_path(list(results.values()), {s.key: s.parent for s in plan.steps})
    assert chain[0].repository == "base-python" and chain[-1].ended == max(r.ended for r in results.values())
    assert all(r.stages["build"] >= 0 and "load" in r.stages for r in results.values())
