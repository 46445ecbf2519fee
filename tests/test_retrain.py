"""Scheduled retrains (issue 6): the training notebook run by papermill per tenant against the session's
Ignite node, RUN rows, promotion decisions, skipping unchanged tenants, a failing tenant that does not stop
the others, the CLI and the cron script, and the notebook itself under nbval. Warm kernels (issue 21): one
kernel runs tenant after tenant with nothing left from the previous one, a failed or hung notebook restarts it,
and a papermill process per tenant (--cold) still works."""
import itertools, json, os, subprocess, sys, uuid
from pathlib import Path

import pytest

from alliedium.ingest import ingest_tickets, load_tickets, tickets_fingerprint
from alliedium.jira import jira_file, read_issues
from alliedium.models import TASKS
from alliedium.registry import FORMAT, active_versions
from alliedium.retrain import (FAILED, SKIPPED, SUCCEEDED, WarmKernel, colocated_retrain, notebook_result, retrain,
                               retrain_tenant, run_notebook_path, train_notebook)
from alliedium.runs import finish_run, get_run, list_runs, release_training, start_training
from alliedium.tenants import create_tenant

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
N_TICKETS = 300


def _tenant(settings, prefix, project=None, n=N_TICKETS):
    "A new tenant with the first `n` tickets of an Apache project (none without `project`)."
    t = f'{prefix}-{uuid.uuid4().hex[:8]}'
    create_tenant(t, settings=settings)
    if project: ingest_tickets(t, itertools.islice(read_issues(jira_file(project), t), n), settings)
    return t


def _no_history(tenant, settings):
    "What training a tenant without tickets fails with: NotEnoughHistory and its message."
    return (f"NotEnoughHistory: tenant {tenant!r} has 0 tickets; at least {settings.train_min_tickets} are needed to "
            "train (ingest more history with `alliedium ingest`, or lower ALLIEDIUM_TRAIN_MIN_TICKETS)")


@pytest.fixture(scope='module')
def tenants(ignite):
    "Two small real tenants (ZooKeeper, Storm) and one without tickets."
    return dict(zk=_tenant(ignite, 'rt-zk', 'Zookeeper'), storm=_tenant(ignite, 'rt-storm', 'Storm'),
                empty=_tenant(ignite, 'rt-empty'))


@pytest.fixture(scope='module')
def first_runs(ignite, tenants):
    "The first retrain of the three tenants, two at a time."
    return {r.tenant_id: r for r in retrain([tenants['zk'], tenants['storm'], tenants['empty']], jobs=2,
                                            settings=ignite, progress=False)}


def test_parameters_cell_is_tagged_and_survives_nbdev_clean(tmp_path):
    nb = json.loads(train_notebook().read_text())
    tagged = [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1 and 'tenant: str' in ''.join(tagged[0]['source'])
    copy = tmp_path/'58_train_tenant.ipynb'
    copy.write_text(train_notebook().read_text())
    r = subprocess.run([str(BIN/'nbdev-clean'), '--fname', str(copy)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cleaned = json.loads(copy.read_text())
    assert [c for c in cleaned['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert not any('#| export' in ''.join(c['source']) or '#| default_exp' in ''.join(c['source']) for c in nb['cells'])


def test_two_tenants_train_and_the_failing_one_does_not_stop_them(ignite, tenants, first_runs):
    zk, storm, empty = (first_runs[tenants[k]] for k in ('zk', 'storm', 'empty'))
    assert (zk.status, storm.status, empty.status) == (SUCCEEDED, SUCCEEDED, FAILED), (zk.error, storm.error)
    assert empty.error == _no_history(tenants['empty'], ignite)
    for run in (zk, storm, empty):
        row = get_run(run.run_id, settings=ignite)
        assert row['tenant_id'] == run.tenant_id and row['kind'] == 'retrain' and row['status'] == run.status
        assert row['finished_at'] >= row['started_at']
        assert Path(row['notebook']) == run_notebook_path(run.tenant_id, run.run_id, ignite)
        assert Path(row['notebook']).exists()
        assert row['metrics']['fingerprint'] and row['metrics']['seconds'] > 0
    assert empty.error == get_run(empty.run_id, settings=ignite)['metrics']['error']


def test_first_run_promotes_and_records_metrics(ignite, tenants, first_runs):
    run = first_runs[tenants['zk']]
    assert run.tasks and run.train_seconds > 0 and run.seconds > run.train_seconds
    for task, r in run.tasks.items():
        assert r['promoted'], f"{task}: the first model of a tenant is promoted ({r['reason']})"
        assert r['metrics']
    assert active_versions(tenants['zk'], settings=ignite) == {t: r['version'] for t, r in run.tasks.items()}
    row = get_run(run.run_id, settings=ignite)
    assert row['metrics']['tasks'] == json.loads(json.dumps(run.tasks))
    assert row['metrics']['overhead_seconds'] == pytest.approx(run.seconds - run.train_seconds, abs=0.01)


def test_executed_notebook_is_the_record(ignite, tenants, first_runs):
    run = first_runs[tenants['storm']]
    nb = json.loads(Path(run.notebook).read_text())
    assert any('injected-parameters' in c.get('metadata', {}).get('tags', []) for c in nb['cells'])
    res = notebook_result(run.notebook)
    assert res['tenant'] == tenants['storm'] and res['run_id'] == run.run_id
    # the kernel papermill started is this environment's Python (the .venv's ipykernel)
    assert Path(res['python']).resolve() == Path(sys.executable).resolve()
    assert any('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', [])), \
        "the report has a plot"
    failed = json.loads(Path(first_runs[tenants['empty']].notebook).read_text())
    assert any(o.get('output_type') == 'error' for c in failed['cells'] for o in c.get('outputs', []))


def test_unchanged_tenant_is_skipped_and_a_changed_one_retrained(ignite, tenants, first_runs):
    zk = tenants['zk']
    skipped, = retrain([zk], settings=ignite, progress=False)
    assert skipped.status == SKIPPED and first_runs[zk].run_id in skipped.note
    assert get_run(skipped.run_id, settings=ignite)['status'] == SKIPPED
    # models stored in another artifact format (an older release's) are trained again, tickets unchanged or not
    last = get_run(first_runs[zk].run_id, settings=ignite)
    finish_run(last['run_id'], SUCCEEDED, {**last['metrics'], 'format': 'skops/1'}, last['notebook'], settings=ignite)
    redone, = retrain([zk], settings=ignite, progress=False)
    assert redone.status == SUCCEEDED, redone.error
    assert get_run(redone.run_id, settings=ignite)['metrics']['format'] == FORMAT
    # a retrain takes the tenant's training claim: while another training runs it is skipped, naming that run
    holder = start_training(zk, settings=ignite)
    try:
        held, = retrain([zk], force=True, settings=ignite, progress=False)
        assert held.status == SKIPPED and holder in held.note
    finally: release_training(zk, holder, settings=ignite)
    start = len([r for r in list_runs(zk, settings=ignite) if r['status'] == SUCCEEDED])
    again, = retrain([zk], force=True, settings=ignite, progress=False)  # released: it trains, and releases in turn
    assert again.status == SUCCEEDED, again.error
    assert len([r for r in list_runs(zk, settings=ignite) if r['status'] == SUCCEEDED]) == start + 1
    release_training(zk, start_training(zk, settings=ignite), settings=ignite)  # nothing left holding the tenant
    # new tickets change the fingerprint: the tenant is retrained
    storm = tenants['storm']
    ingest_tickets(storm, itertools.islice(read_issues(jira_file('Storm'), storm), N_TICKETS, N_TICKETS + 20), ignite)
    # a tolerance of 1 promotes whatever the scores (they are in [0, 1]): the parameter reaches the decision
    again, = retrain([storm], parameters={'tolerance': 1.0, 'tasks': ['priority', 'components']}, settings=ignite,
                     progress=False)
    assert again.status == SUCCEEDED, again.error
    assert sorted(again.tasks) == ['components', 'priority']
    for task, r in again.tasks.items():
        assert r['version'] == first_runs[storm].tasks[task]['version'] + 1 and r['promoted'], r['reason']
        assert 'tolerance 1.0' in r['reason'] or 'first version' in r['reason'], r['reason']
    active = active_versions(storm, settings=ignite)
    assert active['priority'] == again.tasks['priority']['version']
    assert active['assignee'] == first_runs[storm].tasks['assignee']['version']  # not retrained: unchanged
    kinds = [r['status'] for r in list_runs(storm, settings=ignite) if r['kind'] == 'retrain']
    assert kinds.count(SUCCEEDED) == 2


def test_cli_table_and_exit_status(ignite, tenants, first_runs):
    "`alliedium retrain`: every tenant asked for is in the output; exit 1 when any failed, 2 for an unknown tenant."
    # a kernel that does not exist fails every notebook fast: the command still answers for each tenant
    env = dict(os.environ, ALLIEDIUM_RETRAIN_KERNEL='no-such-kernel')
    r = subprocess.run([str(BIN/'alliedium'), 'retrain', '--tenant', tenants['zk'], '--tenant', tenants['storm'],
                        '--force', '--jobs', '2', '--json'], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    runs = {x['tenant_id']: x for x in json.loads(r.stdout)}
    assert {runs[t]['status'] for t in (tenants['zk'], tenants['storm'])} == {FAILED}
    assert 'no-such-kernel' in runs[tenants['zk']]['error']
    r = subprocess.run([str(BIN/'alliedium'), 'retrain', '--tenant', tenants['zk']], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and 'skipped' in r.stdout, r.stdout + r.stderr  # its last success saw these tickets
    r = subprocess.run([str(BIN/'alliedium'), 'retrain', '--tenant', 'no-such-tenant-x'], capture_output=True,
                       text=True)
    assert r.returncode == 2 and 'alliedium tenants create' in ' '.join(r.stderr.split()), r.stderr


def test_cron_script_runs_the_retrain(ignite, tenants, first_runs):
    "ci/retrain-cron.sh on the session node: the unchanged tenant is skipped, exit 0."
    r = subprocess.run([str(ROOT/'ci'/'retrain-cron.sh'), '--tenant', tenants['storm']],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert 'skipped' in r.stdout and 'retrain finished with status 0' in r.stdout


def test_notebook_under_nbval(ignite, tenants, first_runs, tmp_path):
    "The training notebook passes nbval for a tenant with data (parameters injected as papermill does)."
    import papermill
    copy = tmp_path/'train_tenant.ipynb'
    papermill.execute_notebook(str(train_notebook()), str(copy), parameters=dict(tenant=tenants['zk'], run_id='nbval'),
                               prepare_only=True, kernel_name='python3', language='python', progress_bar=False)
    r = subprocess.run([sys.executable, '-m', 'pytest', '--nbval-lax', '--nbval-current-env', '-q', '-p',
                        'no:cacheprovider', '--rootdir', str(tmp_path), str(copy)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    assert ' passed' in r.stdout and 'failed' not in r.stdout


def test_on_cluster_runs_the_thick_clients_colocated_retrain():
    "--on-cluster is available: it runs alliedium.thick.run_colocated_retrain (no 'not available yet' error)."
    from alliedium.thick import run_colocated_retrain
    assert colocated_retrain() is run_colocated_retrain


def test_cli_retrain_on_cluster_trains_on_the_tenants_node(ignite):
    "`alliedium retrain --on-cluster`: a tenant is trained on node0 (models promoted, RUN row); an empty one fails."
    zk, empty = _tenant(ignite, 'rt-oc', 'Zookeeper'), _tenant(ignite, 'rt-oc-empty')
    env = dict(os.environ, ALLIEDIUM_JOB_TIMEOUT='400')  # each colocated job is killed on its node after this
    r = subprocess.run([str(BIN/'alliedium'), 'retrain', '--on-cluster', '--tenant', zk, '--tenant', empty,
                        '--jobs', '2', '--json'], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]  # exit 1: the empty tenant failed
    runs = {x['tenant_id']: x for x in json.loads(r.stdout)}
    ok, failed = runs[zk], runs[empty]
    assert ok['status'] == SUCCEEDED, ok['error']
    assert sorted(ok['tasks']) == sorted(TASKS), ok['tasks']
    assert all((t['version'], t['promoted']) == (1, True) for t in ok['tasks'].values()), ok['tasks']
    assert active_versions(zk, settings=ignite) == {t: 1 for t in TASKS}
    row = get_run(ok['run_id'], settings=ignite)
    assert (row['tenant_id'], row['kind'], row['status'], row['metrics']['node']) == (zk, 'retrain', SUCCEEDED, 'node0')
    assert row['metrics']['fingerprint'] == tickets_fingerprint(zk, settings=ignite)
    assert (failed['status'], failed['error']) == (FAILED, _no_history(empty, ignite))
    assert [x['status'] for x in list_runs(empty, settings=ignite)] == [FAILED]


def _probe(path):
    "A notebook that prints the names its namespace holds (beside IPython's own) and its kernel's pid."
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook(cells=[new_code_cell('tenant = ""', metadata={'tags': ['parameters']}),
                             new_code_cell("import json, os\nprint(json.dumps([sorted(n for n in globals() if n[0] != '_'"
                                           " and n not in ('In', 'Out', 'exit', 'quit', 'get_ipython', 'json', 'os')), "
                                           "os.getpid()]))")],
                      metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nbformat.write(nb, path)
    return path


def _probed(path):
    return json.loads(json.loads(Path(path).read_text())['cells'][-1]['outputs'][0]['text'][0])


def test_warm_kernel_runs_tenant_after_tenant_without_leaking_state(ignite, tenants, first_runs, tmp_path):
    "Two tenants' notebooks in one kernel: nothing the first defined is there for the second; each has its record."
    zk, storm = tenants['zk'], tenants['storm']
    probe = _probe(tmp_path/'probe.ipynb')
    with WarmKernel(ignite) as k:
        k.execute(probe, tmp_path/'fresh.ipynb', {'tenant': 'probe'}, 60)
        fresh, pid = _probed(tmp_path/'fresh.ipynb')  # what a new kernel's namespace holds besides the parameter
        assert 'tenant' in fresh and pid == k.pid
        a = retrain_tenant(zk, force=True, parameters={'tasks': ['priority']}, settings=ignite, kernel=k)
        assert a.status == SUCCEEDED, a.error
        k.execute(probe, tmp_path/'after-zk.ipynb', {'tenant': 'probe'}, 60)
        names, after = _probed(tmp_path/'after-zk.ipynb')
        # the training notebook defined tickets, result, report, settings, pd, ...: all gone, as in a new kernel
        assert names == fresh and after == pid, (names, fresh)
        b = retrain_tenant(storm, force=True, parameters={'tasks': ['priority']}, settings=ignite, kernel=k)
        assert b.status == SUCCEEDED, b.error
        assert (k.starts, k.executed, k.pid) == (1, 4, pid), "one kernel ran all four notebooks"
    ra, rb = notebook_result(a.notebook), notebook_result(b.notebook)
    assert (ra['tenant'], rb['tenant']) == (zk, storm) and a.notebook != b.notebook
    assert (ra['tickets'], rb['tickets']) == (len(load_tickets(zk, ignite)), len(load_tickets(storm, ignite)))
    assert b.tasks['priority']['version'] > first_runs[storm].tasks['priority']['version']
    nb = json.loads(Path(b.notebook).read_text())
    assert any('injected-parameters' in c.get('metadata', {}).get('tags', []) for c in nb['cells'])
    assert nb['metadata']['papermill']['parameters']['tenant'] == storm
    assert k.pid is None  # closed


def test_failed_and_hung_notebooks_restart_the_warm_kernel(ignite, tenants, first_runs, tmp_path):
    "A failing tenant and a hung cell are failed runs with their reason; the next tenant runs in a fresh kernel."
    import nbformat
    nb = nbformat.read(train_notebook(), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("import time\ntime.sleep(globals().get('hang', 0))"))
    hanging = tmp_path/'train_hanging.ipynb'
    nbformat.write(nb, hanging)
    quick = ignite.model_copy(update=dict(retrain_notebook=hanging, retrain_timeout=15))
    zk, empty = tenants['zk'], tenants['empty']
    with WarmKernel(ignite) as k:
        failed = retrain_tenant(empty, force=True, settings=ignite, kernel=k)
        assert (failed.status, failed.error) == (FAILED, _no_history(empty, ignite))
        assert k.starts == 2, "restarted after the failure"
        first = k.pid
        hung = retrain_tenant(zk, force=True, parameters={'hang': 600}, settings=quick, kernel=k)
        assert hung.status == FAILED and 'ALLIEDIUM_RETRAIN_TIMEOUT' in hung.error, hung.error
        assert k.starts == 3 and k.pid != first
        row = get_run(hung.run_id, settings=ignite)
        assert row['status'] == FAILED and row['metrics']['error'] == hung.error
        record = json.loads(Path(hung.notebook).read_text())
        assert hung.error in ''.join(record['cells'][0]['source'])  # the record says why at its top
        # the same notebook without `hang`, the usual timeout: trains in the new kernel
        ok = retrain_tenant(zk, force=True, parameters={'tasks': ['priority']}, kernel=k,
                            settings=ignite.model_copy(update=dict(retrain_notebook=hanging)))
        assert ok.status == SUCCEEDED, ok.error
        assert (k.starts, k.executed) == (3, 3)


def test_cold_runs_a_papermill_process_per_tenant(ignite, tenants, first_runs):
    "warm=False (--cold, ALLIEDIUM_RETRAIN_WARM=false): the papermill process of before, the same record."
    run, = retrain([tenants['storm']], force=True, warm=False, parameters={'tasks': ['priority']}, settings=ignite,
                   progress=False)
    assert run.status == SUCCEEDED, run.error
    res = notebook_result(run.notebook)
    assert res['tenant'] == tenants['storm'] and res['run_id'] == run.run_id
    assert Path(res['python']).resolve() == Path(sys.executable).resolve()


def test_retrain_over_ray_actors(ray_session, ignite, tenants, first_runs):
    "on_ray: the tenants go to Ray actors (not this process), each keeping a warm kernel; records and RUN rows as ever."
    zk, storm, empty = tenants['zk'], tenants['storm'], tenants['empty']
    runs = retrain([zk, storm, empty], jobs=2, force=True, on_ray=True, parameters={'tasks': ['priority']},
                   settings=ignite, progress=False)
    assert [r.tenant_id for r in runs] == [zk, storm, empty]
    assert [r.status for r in runs] == [SUCCEEDED, SUCCEEDED, FAILED], [r.error for r in runs]
    assert runs[2].error == _no_history(empty, ignite)
    workers = {r.worker for r in runs}
    assert None not in workers and 1 <= len(workers) <= 2, workers
    assert all(int(w.rsplit(':', 1)[1]) != os.getpid() for w in workers)
    for r in runs[:2]:
        res = notebook_result(r.notebook)
        assert res['tenant'] == r.tenant_id and res['run_id'] == r.run_id
        assert get_run(r.run_id, settings=ignite)['status'] == SUCCEEDED
