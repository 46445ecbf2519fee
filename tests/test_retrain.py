"""Scheduled retrains (issue 6): the training notebook run by papermill per tenant against the session's
Ignite node, RUN rows, promotion decisions, skipping unchanged tenants, a failing tenant that does not stop
the others, the CLI and the cron script, and the notebook itself under nbval."""
import itertools, json, os, subprocess, sys, uuid
from pathlib import Path

import pytest

from alliedium.ingest import ingest_tickets, tickets_fingerprint
from alliedium.jira import jira_file, read_issues
from alliedium.models import TASKS
from alliedium.registry import FORMAT, active_versions
from alliedium.retrain import (FAILED, SKIPPED, SUCCEEDED, colocated_retrain, notebook_result, retrain,
                               run_notebook_path, train_notebook)
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
