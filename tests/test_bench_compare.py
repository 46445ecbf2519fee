"""`alliedium bench compare`: each available backend trains and predicts on a small slice of real tickets.

Timing is never asserted here (that is what the benchmark prints); these tests check that every backend runs
on the shared arrays, answers one label per test ticket, and that an absent backend says why.
"""
import importlib.util, os, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest

from alliedium.bench.compare import (BackendUnavailable, check_backend, default_datasets, featurize, load_frame,
                                     sklearn_rows)

BIN = Path(sys.executable).parent/'alliedium'


@pytest.fixture(scope='module')
def small_task():
    "Priority on the newest 500 ZooKeeper tickets (the bundled sample), 10 SVD components."
    df = load_frame(default_datasets()['zookeeper'], 'zookeeper').iloc[-500:]
    return featurize(df, 'priority', n_components=10)


def check_rows(rows, task, n):
    assert len(rows) == n
    for r in rows:
        assert r.status == 'ok', (r.solver, r.status)
        assert r.n_test == len(task.y_test) and r.runs == 1 and 0 <= r.accuracy <= 1 and 0 <= r.macro_f1 <= 1


def test_featurisation_is_shared_dense_and_temporal(small_task):
    t = small_task
    assert t.X_train.dtype == np.float64 and t.X_train.shape[1] == t.X_test.shape[1] == t.n_features
    assert set(t.y_test) <= set(range(len(t.classes))) and t.n_text == 10


def test_sklearn_every_solver(small_task):
    check_rows(sklearn_rows(small_task, runs=1), small_task, 7)


def test_unsuitable_solver_is_a_skipped_row_with_its_reason(small_task):
    "newton-cholesky on 20 classes: not timed, the row says why (its Hessian is (classes x features)^2)."
    from alliedium.bench.compare import NEWTON_CHOLESKY_MAX_COEF, BenchTask
    t = small_task
    wide = lambda X: np.tile(X, (1, NEWTON_CHOLESKY_MAX_COEF // (20*X.shape[1]) + 1))
    task = BenchTask('t', 'assignee', wide(t.X_train), t.y_train, wide(t.X_test), t.y_test,
                     [str(i) for i in range(20)], [], [])
    nc, lbfgs = sklearn_rows(task, runs=1, solvers=('newton-cholesky', 'lbfgs'))[:2]
    assert nc.status.startswith('skipped: 20 classes: newton-cholesky') and nc.runs == 0 and nc.fit_s != nc.fit_s
    assert lbfgs.status == 'ok' and lbfgs.runs == 1


def test_torch_logistic_and_bag_of_embeddings(small_task):
    if importlib.util.find_spec('torch') is None:
        pytest.skip("PyTorch is not installed (the optional extra [dl]: `make setup-dl`)")
    from alliedium.bench.pytorch import torch_rows
    rows = torch_rows(small_task, runs=1)
    check_rows(rows, small_task, 3)
    assert rows[-1].device in ('cpu', 'cuda')


def test_julia_mlj(small_task):
    "Where Julia and juliacall exist: both solvers fit; elsewhere skipped with the check's reason (not run here)."
    from alliedium.bench.julia import julia_rows
    ok, info = check_backend('julia-mlj')
    if not ok: pytest.skip(info)  # e.g. 'not run here: no Julia runtime (install Julia 1.10+ or ...)'
    check_rows(julia_rows(small_task, runs=1), small_task, 2)


def test_julia_fails_fast_without_a_runtime(monkeypatch, tmp_path, small_task):
    "No Julia on PATH and no PYTHON_JULIACALL_EXE: a clear 'no Julia runtime' at once; juliacall is never imported."
    from alliedium.bench.julia import julia_check, julia_rows
    monkeypatch.setenv('PATH', str(tmp_path))
    monkeypatch.delenv('PYTHON_JULIACALL_EXE', raising=False)
    with pytest.raises(BackendUnavailable, match='no Julia runtime'): julia_check()
    t = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r'no Julia runtime \(install Julia 1.10\+'): julia_rows(small_task)
    assert time.monotonic() - t < 1
    ok, info = check_backend('julia-mlj')
    assert not ok and info == 'not run here: no Julia runtime (install Julia 1.10+ or set PYTHON_JULIACALL_EXE)'
    assert 'juliacall' not in sys.modules


def test_a_backend_without_its_package_is_not_run_here(monkeypatch):
    "PyTorch absent (its import fails): 'not run here' with how to install it, and its capabilities say so too."
    from alliedium.bench.compare import backend_capabilities
    monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError, as when it is not installed
    ok, info = check_backend('pytorch')
    assert not ok and info.startswith("not run here: PyTorch is not installed: run `make setup-dl`")
    caps = backend_capabilities('pytorch', (ok, info))
    assert caps['backend'] == 'pytorch' and caps['status'] == info and caps['solvers'] == '-'


def test_ignite_ml_from_local_arrays_and_from_a_cache(ignite, small_task):
    from alliedium.bench.ignite_ml import ignite_close, ignite_rows
    try: rows = ignite_rows(small_task, runs=1, max_iterations=3)
    finally: ignite_close()
    check_rows(rows, small_task, 2)
    assert [r.solver for r in rows] == ['SGD, local arrays', 'SGD, cache'] and 'server node' in rows[1].device


def test_command_writes_table_chart_and_capabilities(ignite, tmp_path):
    "The command as a user runs it (Ignite is covered above: its default 100 iterations are too slow for a test)."
    backends = ['--backend', 'scikit-learn', '--backend', 'julia-mlj']
    if importlib.util.find_spec('torch') is not None: backends += ['--backend', 'pytorch']
    r = subprocess.run([str(BIN), 'bench', 'compare', '--data', f"zk={default_datasets()['zookeeper']}",
                        '--task', 'priority', '--task', 'assignee', *backends, '--runs', '1', '--max-rows', '400',
                        '--components', '10', '--out', str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'COLUMNS': '250'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['capabilities.csv', 'compare.csv', 'compare.md',
                                                          'compare.png']
    md = (tmp_path/'compare.md').read_text()
    assert '| zk | priority | scikit-learn | lbfgs |' in md and '| zk | assignee | scikit-learn | saga |' in md
    assert 'stratified_cv' in md
    julia_ok, julia_info = check_backend('julia-mlj')
    if not julia_ok:  # said before the table, on each of its rows, in the capabilities and in the command's output
        assert f"- julia-mlj: {julia_info}" in md.split('| tenant |')[0]
        assert all(f"| zk | {t} | julia-mlj | - | - | - | 0 |" in md for t in ('priority', 'assignee'))
        assert md.count(f"| {julia_info} |") == 3 and f"julia-mlj: {julia_info}" in r.stdout
    assert (tmp_path/'compare.png').read_bytes()[:4] == b'\x89PNG'


def test_unknown_task_is_one_clear_line():
    r = subprocess.run([str(BIN), 'bench', 'compare', '--task', 'components'], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert "unknown task 'components': one of priority, assignee" in r.stderr
