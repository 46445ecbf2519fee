"""Durable training jobs against the session's Ignite node (and, for the kill test, real Ray Serve): a job beats,
a job whose worker died is failed by whoever reads it next and its tenant released, a launch that fails after the
claim leaves neither a running row nor a claim. Times are printed, never asserted."""
import json, os, signal, time, uuid

import httpx
import psutil
from fastapi.testclient import TestClient

from alliedium.config import Settings
from alliedium.serving.api import LocalBackend, make_api, settings_overrides
from alliedium.tenants import create_tenant

from test_serving import bearer


def new_tenant(settings, prefix='jobs') -> tuple[str, str]:
    t = f'{prefix}-{uuid.uuid4().hex[:8]}'
    return t, create_tenant(t, settings=settings)


def claim_of(tenant, settings):
    from alliedium.ignite import ignite_client
    from alliedium.runs import _training_cache
    with ignite_client(settings) as c: return _training_cache(c, settings).get(tenant)


def test_a_job_without_heartbeat_reads_failed_and_frees_the_tenant(ignite):
    "A job claimed for a worker that died before its first beat: GET jobs fails it (WorkerLost) and frees the tenant."
    from alliedium.runs import get_run, start_training
    s = ignite.model_copy(update=dict(train_lost_seconds=2))
    api = TestClient(make_api(LocalBackend(s)))
    t, key = new_tenant(s)
    job = start_training(t, s, heartbeat=False)  # as the API claims: the worker beats, and this one never will
    r = api.get(f'/v1/tenants/{t}/jobs/{job}', headers=bearer(key))
    assert r.status_code == 200 and r.json()['status'] == 'running', r.text  # within train_lost_seconds: alive
    assert api.post(f'/v1/tenants/{t}/train', headers=bearer(key)).status_code == 409
    time.sleep(2.5)
    assert claim_of(t, s) == job  # nobody has looked yet: the claim is still there
    r = api.get(f'/v1/tenants/{t}/jobs/{job}', headers=bearer(key))
    assert r.status_code == 200 and r.json()['status'] == 'failed', r.text
    assert r.json()['metrics']['error'] == 'WorkerLost' and 'no heartbeat' in r.json()['metrics']['detail'], r.text
    assert claim_of(t, s) is None  # the reader released it
    r = api.post(f'/v1/tenants/{t}/train', headers=bearer(key))  # a new training is accepted at once
    assert r.status_code == 202 and r.json()['job_id'] != job, r.text
    new = r.json()['job_id']
    for _ in range(600):  # the tenant has no tickets: the job ends quickly with NotEnoughHistory
        if get_run(new, s)['status'] != 'running': break
        time.sleep(0.2)
    assert get_run(new, s)['metrics']['error'] == 'NotEnoughHistory' and claim_of(t, s) is None


def test_a_running_job_beats_and_is_not_given_up(ignite):
    "While its worker lives, a job's heartbeat advances and a reader past train_lost_seconds leaves it running."
    from alliedium.runs import finish_run, get_run, release_training, start_heartbeat, start_training
    s = ignite.model_copy(update=dict(train_heartbeat_seconds=0.3, train_lost_seconds=2))
    api = TestClient(make_api(LocalBackend(s)))
    t, key = new_tenant(s)
    job = start_training(t, s, heartbeat=False)
    assert start_heartbeat(job, s)  # what run_training_job does first on its worker
    try:
        first = get_run(job, s)['metrics']['heartbeat_at']
        time.sleep(3)  # longer than train_lost_seconds
        r = api.get(f'/v1/tenants/{t}/jobs/{job}', headers=bearer(key))
        assert r.status_code == 200 and r.json()['status'] == 'running', r.text
        assert r.json()['metrics']['heartbeat_at'] > first, r.text
        assert api.post(f'/v1/tenants/{t}/train', headers=bearer(key)).json()['job_id'] == job
    finally:
        release_training(t, job, s); finish_run(job, 'failed', {'error': 'test'}, settings=s)


class _NoWorkers(LocalBackend):
    "A backend whose launch fails after the claim (say, Ray lost between the claim and the task)."
    def launch_training(self, tenant, run_id, tasks): raise RuntimeError('the cluster refused the task')


def test_a_launch_failure_fails_the_run_and_releases_the_claim(ignite):
    from alliedium.runs import list_runs
    api = TestClient(make_api(_NoWorkers(ignite)))
    t, key = new_tenant(ignite)
    r = api.post(f'/v1/tenants/{t}/train', headers=bearer(key))
    assert r.status_code == 503 and r.json()['error'] == 'LaunchFailed' and 'retry-after' in r.headers, r.text
    assert 'RuntimeError' in r.json()['detail'], r.text
    [run] = list_runs(t, settings=ignite)
    assert run['status'] == 'failed' and run['metrics']['error'] == 'LaunchFailed', run
    assert 'the cluster refused the task' in run['metrics']['detail'] and claim_of(t, ignite) is None
    r = api.post(f'/v1/tenants/{t}/train', headers=bearer(key))  # not blocked by the failed launch
    assert r.status_code == 503 and len(list_runs(t, settings=ignite)) == 2, r.text


# --- kill test: real Ray Serve, a real training on real Jira data, its Ray worker SIGKILLed ---

def _training_workers(settings) -> list[psutil.Process]:
    "This session's Ray workers running `run_training_job` (titled by Ray; told apart by our node's client port)."
    found = []
    for p in psutil.process_iter(['cmdline']):
        try:
            if 'ray::run_training_job' not in ' '.join(p.info['cmdline'] or []): continue
            if p.environ().get('ALLIEDIUM_IGNITE_CLIENT_PORT') == str(settings.ignite_client_port): found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied): continue
    return found


def _poll(http, t, key, job, until, limit=600):
    for _ in range(limit):
        r = http.get(f'/v1/tenants/{t}/jobs/{job}', headers=bearer(key))
        assert r.status_code == 200, r.text
        if until(r.json()): return r.json()
        time.sleep(0.5)
    raise AssertionError(f"job {job} never reached the state awaited: {r.json()}")


def test_sigkill_of_the_training_worker(serve_url, ignite):
    "SIGKILL the Ray worker of a running training: the job reads failed (WorkerLost), and a new training runs."
    from ray import serve
    from alliedium.ingest import ingest_files
    from alliedium.jira import sample_dir
    from alliedium.serving.runtime import load_app
    s = Settings(**{**settings_overrides(ignite), 'train_heartbeat_seconds': 1, 'train_lost_seconds': 20,
                    'serve_replica_cpus': 0.1, 'serve_train_cpus': 0.5, 'serve_models_in_ingress': True})
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s), name='jobs',
              route_prefix='/jobs')
    try:
        t, key = new_tenant(ignite, 'kill')
        ingest_files(t, [sample_dir(ignite)/'Zookeeper.jsonl.gz'], settings=ignite)
        with httpx.Client(base_url=f'{serve_url}/jobs', timeout=120) as http:
            r = http.post(f'/v1/tenants/{t}/train', headers=bearer(key))
            assert r.status_code == 202, r.text
            job = r.json()['job_id']
            beating = _poll(http, t, key, job, lambda j: 'heartbeat_at' in j['metrics'] or j['status'] != 'running')
            assert beating['status'] == 'running', beating['metrics']
            workers = _training_workers(ignite)
            assert len(workers) == 1, workers
            os.kill(workers[0].pid, signal.SIGKILL)
            t0 = time.monotonic()
            done = _poll(http, t, key, job, lambda j: j['status'] != 'running')
            print(f"\nworker killed -> job read failed after {time.monotonic() - t0:.1f}s "
                  f"(train_lost_seconds {s.train_lost_seconds:.0f})")
            assert done['status'] == 'failed' and done['metrics']['error'] == 'WorkerLost', done['metrics']
            assert claim_of(t, ignite) is None
            r = http.post(f'/v1/tenants/{t}/train', headers=bearer(key))
            assert r.status_code == 202 and r.json()['job_id'] != job, r.text
            again = _poll(http, t, key, r.json()['job_id'], lambda j: j['status'] != 'running', limit=2400)
            assert again['status'] == 'succeeded', again['metrics']
            assert http.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'NPE in the leader election'}},
                             headers=bearer(key)).status_code == 200
    finally: serve.delete('jobs')


def test_the_colocated_retrain_takes_the_training_claim(thick_gateway, ignite):
    "While another training of the tenant runs, the colocated retrain is refused (run 'skipped'); then it runs."
    from alliedium.runs import TrainingRunning, finish_run, list_runs, release_training, start_training
    from alliedium.thick import run_colocated_retrain
    t, _ = new_tenant(ignite, 'colo')
    s = ignite.model_copy(update=dict(retrain_entry='alliedium.thick:probe_job'))
    job = start_training(t, ignite)  # say, a training through the API
    try:
        try: run_colocated_retrain(t, settings=s, gateway=thick_gateway, timeout=120)
        except TrainingRunning as e: assert e.run_id == job
        else: raise AssertionError('the colocated retrain ran beside a running training')
        refused = [r for r in list_runs(t, settings=ignite) if r['kind'] == 'retrain']
        assert [(r['status'], r['metrics']['running']) for r in refused] == [('skipped', job)], refused
    finally: release_training(t, job, ignite); finish_run(job, 'succeeded', settings=ignite)
    r = run_colocated_retrain(t, settings=s, gateway=thick_gateway, timeout=120)
    assert claim_of(t, ignite) is None  # released when it ended
    assert [x['status'] for x in list_runs(t, settings=ignite) if x['run_id'] == r['run_id']] == ['succeeded']


def test_sigkill_of_a_bulk_ingest_loses_and_duplicates_nothing(ignite):
    "`alliedium ingest` SIGKILLed after its first batches: a re-run stores exactly the rest, once."
    import subprocess, sys
    from pathlib import Path
    from alliedium.ignite import ignite_client
    from alliedium.jira import read_issues, sample_dir
    t, _ = new_tenant(ignite, 'ingkill')
    files = [str(sample_dir(ignite)/f'{p}.jsonl.gz') for p in ('Zookeeper', 'Storm')]
    newest = {}
    for f in files:
        for item in read_issues(f, t):
            if getattr(item, 'issue_key', None): newest[item.issue_key] = max(newest.get(item.issue_key, 0),
                                                                            int(item.updated_at.timestamp() * 1000))
    def stored() -> dict:
        with ignite_client(ignite) as c:
            return {k: ms for k, ms in c.sql(
                "SELECT issue_key, DATEDIFF('MS', TIMESTAMP '1970-01-01 00:00:00', updated_at) "
                "FROM ALLIEDIUM.TICKET WHERE tenant_id = ?", query_args=[t])}
    cli = [str(Path(sys.executable).with_name('alliedium')), 'ingest', '--tenant', t, '--json', *files]
    p = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while p.poll() is None and not stored(): time.sleep(0.05)  # the first batch is committed ...
        p.send_signal(signal.SIGKILL)  # ... and the process dies mid-file
    finally: p.wait(30)
    assert p.returncode == -signal.SIGKILL, p.returncode
    seen, kept = None, stored()
    first = len(kept)
    while kept != seen:  # SQL reads are not transactional: a commit the node was applying when the client died shows
        time.sleep(0.5)  # part-way; read until the node is quiet
        seen, kept = kept, stored()
    print(f"\nkilled after {len(kept)} of {len(newest)} tickets were stored (SQL saw {first} right after the kill)")
    assert 0 < len(kept) < len(newest) and all(newest[k] == ms for k, ms in kept.items())
    r = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"re-run: {again}")
    assert (again['inserted'], again['unchanged'], again['rejected']) == (len(newest) - len(kept), len(kept), 0), again
    assert stored() == newest  # every ticket once, each at its newest version
