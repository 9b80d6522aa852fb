"""The comparison on Ray Tune: the same numbers as the serial path, failures named, bad
addresses refused fast. One local Ray (2 CPUs) for the module; the cluster tests are in
test_cluster.py."""

import sys
import time

import pandas as pd
import pytest

from fusionkit import compare
from fusionkit.grid import RayExecutor, SerialExecutor, TrainJob, executor
from fusionkit.grid.executors import check_reachable
from fusionkit.train import TrainConfig
from tests.synthetic import label_problem

pytestmark = pytest.mark.slow
CFG = TrainConfig(epochs=5, batch_size=32, patience=3)
#: what a training computes; timings and the node differ between runs
DETERMINISTIC = ["method", "seed", "config", "val_accuracy", "best_epoch", "epochs_run", "params", "test_accuracy",
                 "test_macro_f1"]  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return label_problem(n=150, seed=5)


@pytest.fixture(scope="module")
def ray_ex():
    ex = RayExecutor(num_cpus=2, show_progress=False)
    yield ex
    ex.close()


def _sorted(df):
    return df[DETERMINISTIC].sort_values(["method", "seed"]).reset_index(drop=True)


def test_ray_gives_exactly_the_serial_paths_numbers_and_choices(data, ray_ex):
    kw = dict(seeds=[0, 1], hidden=16, search_trials=2, show_progress=False)
    serial = compare.run(["concat", "lmf"], data, CFG, 6, **kw)
    on_ray = compare.run(["concat", "lmf"], data, CFG, 6, executor=ray_ex, **kw)
    pd.testing.assert_frame_equal(_sorted(serial.untuned_runs), _sorted(on_ray.untuned_runs))
    pd.testing.assert_frame_equal(_sorted(serial.runs), _sorted(on_ray.runs))
    assert serial.configs == on_ray.configs
    assert serial.search.trials.val_accuracy.tolist() == on_ray.search.trials.val_accuracy.tolist()
    # the kept models came back from the workers: the same predictions as the serial ones
    from fusionkit.train import predict

    for m in ("concat", "lmf"):
        a, b = predict(serial.models[m], data["test"])[0], predict(on_ray.models[m], data["test"])[0]
        assert (a == b).all()


def test_a_job_that_raises_is_retried_then_named_with_its_configuration_and_the_rest_completes(data, ray_ex):
    jobs = [TrainJob("concat", 0, {"hidden": 16}, CFG), TrainJob("lmf", 0, {"hidden": 16, "fusion.rank": 0}, CFG)]
    ok, bad = ray_ex.run(jobs, {"main": (data, 6)})
    assert ok.ok and ok.node_id
    assert not bad.ok and bad.attempts == ray_ex.max_failures + 1
    assert bad.error.startswith('lmf/seed0 [grid] with {"fusion.rank": 0, "hidden": 16}: ValueError')


def test_every_trial_runs_with_the_threads_its_resources_give(data):
    with SerialExecutor(cpus_per_trial=2, show_progress=False) as ex:
        (out,) = ex.run([TrainJob("concat", 0, {"hidden": 16}, CFG)], {"main": (data, 6)})
    assert out.job.cfg.num_threads == 2  # the thread count is part of the job (and of its key)
    assert TrainJob("concat", 0, {}, CFG).key != out.job.key


def test_an_unreachable_address_fails_within_seconds_naming_it():
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"ray_address '127\.0\.0\.1:9': no Ray cluster reachable"):
        check_reachable("127.0.0.1:9", timeout=5)
    assert time.perf_counter() - t0 < 30
    with pytest.raises(ValueError, match="expected '', 'auto', 'host:port'"):
        check_reachable("nonsense")
    with pytest.raises(ValueError, match="executor 'dask'"):
        executor("dask")


def test_without_ray_installed_the_message_says_how_to_install_it(monkeypatch):
    from fusionkit.grid import executors

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'ray\[tune\]'.*executor='serial'"):
        executors.import_ray()


def test_every_plan_of_an_executor_runs_in_the_same_trainables(data, ray_ex):
    # one Tune run serves all of an executor's plans: the second plan's trials run in processes
    # the first one started (no new trainables, no second Tune start)
    first = ray_ex.run(
        [TrainJob("concat", s, {"hidden": 16}, CFG, tag="first") for s in range(10, 14)], {"main": (data, 6)}
    )
    second = ray_ex.run(
        [TrainJob("lmf", s, {"hidden": 16}, CFG, tag="second") for s in range(10, 14)], {"main": (data, 6)}
    )
    assert all(o.ok and o.pid for o in first + second)
    assert {o.pid for o in second} <= {o.pid for o in first}
    # the same splits in a new (splits, num_classes) tuple: not put into the object store again
    held = ray_ex._refs["main"]
    ray_ex.run([TrainJob("concat", 30, {"hidden": 16}, CFG)], {"main": (data, 6)})
    assert ray_ex._refs["main"][1] == held[1]
    # a dataset given under the name again, changed, is the one the trials see
    other = label_problem(n=150, seed=9)
    job = TrainJob("concat", 20, {"hidden": 16}, CFG)
    (again,) = ray_ex.run([job], {"main": (other, 6)})
    (on_other,) = SerialExecutor(show_progress=False).run([job], {"main": (other, 6)})
    (on_data,) = SerialExecutor(show_progress=False).run([job], {"main": (data, 6)})
    assert again.row["val_accuracy"] == on_other.row["val_accuracy"] != on_data.row["val_accuracy"]


def test_a_batch_is_handed_out_longest_first_by_what_each_method_took_before():
    from fusionkit.grid.executors import Memo, _PlanRun, single

    class Owner:
        memo, max_failures = Memo(), 0
        took = {"concat": 1.0, "cross_attention": 9.0, "lmf": 2.0}

        def prepare(self, jobs):
            return jobs

    jobs = [TrainJob(m, 0, {}, CFG) for m in ("concat", "lmf", "tfn", "cross_attention")]
    run = _PlanRun(single(jobs), Owner(), {"main": ({}, 2)}, progress_bar())
    # never seen (tfn) first, then the slowest; the outcomes still come back in the batch's order
    assert [j.method for j in run.queue] == ["tfn", "cross_attention", "lmf", "concat"]
    assert [j.method for j in run.batch.jobs] == ["concat", "lmf", "tfn", "cross_attention"]


def progress_bar():
    from fusionkit.progress import progress

    return progress(total=0, enabled=False)


def test_a_session_threads_tune_controller_keeps_its_idle_trainables_until_the_run_ends():
    import threading

    from ray.tune.execution import tune_controller

    from fusionkit.grid.executors import _SESSION_THREAD, _keep_trainables

    _keep_trainables()
    made = {}

    def in_session():
        _SESSION_THREAD.active = True
        made["session"] = tune_controller._ObjectCache(may_keep_one=True)

    t = threading.Thread(target=in_session)
    t.start()
    t.join()
    made["other"] = tune_controller._ObjectCache(may_keep_one=True)  # this thread: Tune's own behaviour
    for cache in made.values():
        assert all(cache.cache_object("1cpu", a) for a in ("actor0",)) and cache.num_cached_objects == 1
    # no trial waits (max 0): Tune keeps at most one idle trainable; the session's keeps both
    assert made["other"].cache_object("1cpu", "actor1") is False
    assert made["session"].cache_object("1cpu", "actor1") is True
    assert list(made["session"].flush_cached_objects()) == [] and made["session"].num_cached_objects == 2
    assert sorted(made["session"].flush_cached_objects(force_all=True)) == ["actor0", "actor1"]
