"""The triage API in this process (`alliedium.serving.api.make_api` with `LocalBackend`) against the session's
Ignite node and real Jira payloads: auth, validation, limits, webhooks, errors. The same app under
Ray Serve is `tests/test_serve_e2e.py`."""
import gzip, itertools, json, time, uuid

import pytest
from fastapi.testclient import TestClient

from alliedium.config import Settings
from alliedium.ignite import free_port
from alliedium.jira import sample_dir
from alliedium.serving.api import LocalBackend, make_api
from alliedium.tenants import create_tenant


def sample_issues(project='Zookeeper', n=5) -> list[dict]:
    "The first `n` issues of a bundled real Jira export."
    with gzip.open(sample_dir()/f'{project}.jsonl.gz', 'rt') as f:
        return [json.loads(l) for l in itertools.islice(f, n)]


def new_tenant(settings, prefix='srv') -> tuple[str, str]:
    t = f'{prefix}-{uuid.uuid4().hex[:8]}'
    return t, create_tenant(t, settings=settings)


def bearer(key): return {'Authorization': f'Bearer {key}'}


@pytest.fixture(scope='module')
def api(ignite):
    return TestClient(make_api(LocalBackend(ignite)))


@pytest.fixture(scope='module')
def two_tenants(ignite):
    return new_tenant(ignite), new_tenant(ignite)


def test_healthz_reports_ignite_and_serve(api):
    r = api.get('/healthz')
    assert r.status_code == 200, r.text
    assert r.json()['ignite']['ok'] is True and r.json()['serve']['status'] == 'RUNNING'


def test_openapi_docs_list_the_routes(api):
    paths = api.get('/openapi.json').json()['paths']
    for p in ('/v1/tenants/{tenant}/triage', '/v1/tenants/{tenant}/webhooks/jira', '/v1/tenants/{tenant}/train',
              '/v1/tenants/{tenant}/jobs/{job_id}', '/v1/tenants/{tenant}/models', '/healthz'):
        assert p in paths
    assert api.get('/docs').status_code == 200


def test_missing_or_unknown_key_is_401(api, two_tenants):
    (t, _), _ = two_tenants
    issue = {'fields': {'summary': 'x'}}
    for headers in ({}, {'Authorization': 'Basic abc'}, bearer('ak_not-a-key')):
        r = api.post(f'/v1/tenants/{t}/triage', json=issue, headers=headers)
        assert r.status_code == 401 and r.headers['www-authenticate'] == 'Bearer', r.text


def test_another_tenants_key_is_403(api, two_tenants):
    (a, _), (_, key_b) = two_tenants
    routes = (('post', 'triage'), ('post', 'webhooks/jira'), ('post', 'train'), ('get', 'models'), ('get', 'jobs/x'))
    for method, path in routes:
        r = api.request(method.upper(), f'/v1/tenants/{a}/{path}', json={'fields': {'summary': 'x'}},
                        headers=bearer(key_b))
        assert r.status_code == 403, (path, r.text)


def test_malformed_body_is_422_with_field_errors(api, two_tenants):
    (t, key), _ = two_tenants
    r = api.post(f'/v1/tenants/{t}/triage', json={'fields': {'description': 'no summary'}}, headers=bearer(key))
    assert r.status_code == 422
    assert ['body', 'fields', 'summary'] in [e['loc'] for e in r.json()['detail']]
    r = api.post(f'/v1/tenants/{t}/triage', content=b'{not json',
                 headers={**bearer(key), 'Content-Type': 'application/json'})
    assert r.status_code == 422
    worklog = {'webhookEvent': 'jira:worklog_updated', 'issue': {'key': 'A-1'}}
    r = api.post(f'/v1/tenants/{t}/webhooks/jira', json=worklog, headers=bearer(key))
    assert r.status_code == 422 and r.json()['detail'][0]['loc'] == ['body', 'webhookEvent']


def test_body_over_limit_is_413(api, two_tenants):
    (t, key), _ = two_tenants
    big = {'fields': {'summary': 'x', 'description': 'y' * (1 << 20)}}
    r = api.post(f'/v1/tenants/{t}/triage', json=big, headers=bearer(key))
    assert r.status_code == 413 and r.json()['error'] == 'BodyTooLarge'


def test_webhooks_ingest_idempotently(api, two_tenants, ignite):
    from alliedium.ingest import load_tickets
    (t, key), _ = two_tenants
    issue = sample_issues(n=1)[0]
    post = lambda ev: api.post(f'/v1/tenants/{t}/webhooks/jira', json=ev, headers=bearer(key))
    event = {'webhookEvent': 'jira:issue_created', 'issue': issue}
    r1, r2 = post(event), post(event)
    assert (r1.status_code, r2.status_code) == (200, 200), r1.text + r2.text
    assert (r1.json()['result'], r2.json()['result']) == ('inserted', 'unchanged')
    assert issue['key'] in set(load_tickets(t, ignite).issue_key)
    gone = {'webhookEvent': 'jira:issue_deleted', 'timestamp': int(time.time() * 1000),
            'issue': {'key': issue['key'], 'fields': {}}}
    r3, r4 = post(gone), post(gone)  # the second is Jira retrying the same delivery
    assert (r3.status_code, r4.status_code) == (200, 200), r3.text + r4.text
    assert (r3.json()['event'], r3.json()['issue_key']) == ('jira:issue_deleted', issue['key'])
    assert (r3.json()['result'], r4.json()['result']) == ('deleted', 'unchanged')
    assert issue['key'] not in set(load_tickets(t, ignite).issue_key)


def test_unusable_webhook_issue_is_422(api, two_tenants):
    (t, key), _ = two_tenants
    bad = {'webhookEvent': 'jira:issue_updated',
           'issue': {'key': 'ZK-1', 'fields': {'summary': 'x', 'created': 'not a date'}}}
    r = api.post(f'/v1/tenants/{t}/webhooks/jira', json=bad, headers=bearer(key))
    assert r.status_code == 422 and r.json()['error'] == 'BadIssue', r.text


def test_new_tenant_has_no_models(api, two_tenants):
    (t, key), _ = two_tenants
    r = api.get(f'/v1/tenants/{t}/models', headers=bearer(key))
    assert r.status_code == 200 and r.json() == {'tenant': t, 'models': []}


def test_ignite_unreachable_is_503_with_retry_after(ignite):
    dead = Settings(**{**ignite.model_dump(), 'ignite_hosts': f'127.0.0.1:{free_port()}'})
    api = TestClient(make_api(LocalBackend(dead)))
    r = api.get('/healthz')
    assert r.status_code == 503 and r.headers['retry-after'] == str(dead.serve_retry_after)
    assert r.json()['ignite']['ok'] is False
    r = api.post('/v1/tenants/t/triage', json={'fields': {'summary': 'x'}}, headers=bearer('ak_x'))
    assert r.status_code == 503 and r.json()['error'] == 'IgniteUnavailable' and 'retry_after' in r.json()


def test_second_training_request_is_409_with_the_running_job(api, ignite):
    from alliedium.runs import finish_run, release_training, start_training
    (t, key), (u, key_u) = new_tenant(ignite), new_tenant(ignite)
    job = start_training(t, ignite)  # a training of t that is still running (say, `alliedium train` in a terminal)
    try:
        r = api.post(f'/v1/tenants/{t}/train', headers=bearer(key))
        assert r.status_code == 409 and r.json()['job_id'] == job and r.json()['status'] == 'training', r.text
        r = api.get(f'/v1/tenants/{t}/jobs/{job}', headers=bearer(key))
        assert r.status_code == 200
        assert (r.json()['job_id'], r.json()['status'], r.json()['kind']) == (job, 'running', 'train')
        r = api.get(f'/v1/tenants/{u}/jobs/{job}', headers=bearer(key_u))  # another tenant's job id: not found
        assert r.status_code == 404 and r.json()['error'] == 'JobNotFound'
        assert api.get(f'/v1/tenants/{t}/jobs/no-such-job', headers=bearer(key)).status_code == 404
    finally: finish_run(job, 'failed', {'error': 'test'}, settings=ignite); release_training(t, job, ignite)


def test_one_training_per_tenant_whatever_the_replica(ignite):
    "One run wins the claim to train; the others get its id; an ended or lost run's claim is taken over."
    # replicas (and the CLI) race for the claim; a refused run leaves no RUN row
    from concurrent.futures import ThreadPoolExecutor
    from alliedium.runs import TrainingRunning, finish_run, get_run, list_runs, release_training, start_training
    t, key = new_tenant(ignite)
    def attempt(_):
        try: return start_training(t, ignite), None
        except TrainingRunning as e: return None, e.run_id
    with ThreadPoolExecutor(6) as pool: answers = list(pool.map(attempt, range(6)))
    winners = [r for r, _ in answers if r is not None]
    assert len(winners) == 1 and all(held == winners[0] for r, held in answers if r is None), answers
    assert [r['run_id'] for r in list_runs(t, settings=ignite)] == winners   # the refused ones left no RUN row
    # ended without releasing (a worker killed after recording)
    finish_run(winners[0], 'succeeded', {}, settings=ignite)
    nxt = start_training(t, ignite)   # the claim of an ended run is taken over
    with pytest.raises(TrainingRunning) as e: start_training(t, ignite)
    assert e.value.run_id == nxt and len(list_runs(t, settings=ignite)) == 2
    slow = TestClient(make_api(LocalBackend(ignite.model_copy(update=dict(train_timeout=1e-3)))))
    r = slow.get(f'/v1/tenants/{t}/jobs/{nxt}', headers=bearer(key))   # after train_timeout: the lost job reads failed
    assert r.status_code == 200 and r.json()['status'] == 'failed', r.text
    assert r.json()['metrics']['error'] == 'Abandoned', r.text
    later = start_training(t, ignite)   # ... and no longer blocks a new training
    assert get_run(nxt, ignite)['status'] == 'failed' and get_run(nxt, ignite)['metrics']['error'] == 'Abandoned'
    release_training(t, later, ignite)
    finish_run(later, 'failed', {'error': 'test'}, settings=ignite)

def test_serve_config_is_valid_and_builds_the_app():
    "serve/config.yaml passes Ray's own schema (`serve run`, `serve deploy`) and builds the app."
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema
    from alliedium.serving.runtime import load_app, serve_config
    cfg = serve_config()
    ServeDeploySchema.model_validate(cfg)
    for a in cfg['applications']: assert isinstance(load_app(a['import_path'], a.get('args')), Application)


# Issue 17: bad input is a typed 4xx with what to do, never a 500.

def _deep_adf(depth):
    doc = node = {'type': 'doc', 'content': []}
    for _ in range(depth): node['content'].append(node := {'type': 'paragraph', 'content': []})
    return doc


@pytest.mark.parametrize('case', ['year_1', 'year_9999', 'lone_surrogate', 'deep_adf', 'deeper_adf'])
def test_bad_issues_are_422_on_triage_and_webhooks(api, two_tenants, case):
    (t, key), _ = two_tenants
    fields = {'summary': 'x', 'created': '2026-01-01T00:00:00.000+0000'}
    fields.update({'year_1': {'created': '0001-01-01T00:00:00.000+0100'},
                   'year_9999': {'updated': '9999-12-31T23:59:59.000-0100'},
                   'lone_surrogate': {'summary': 'a\ud800b'},
                   'deep_adf': {'description': _deep_adf(120)}, 'deeper_adf': {'description': _deep_adf(400)}}[case])
    issue = {'key': 'ZK-1', 'fields': fields}
    body = lambda obj: json.dumps(obj).encode()  # ASCII JSON: a lone surrogate travels as its \ud800 escape
    heads = {**bearer(key), 'Content-Type': 'application/json'}
    for path, obj in (('triage', issue), ('webhooks/jira', {'webhookEvent': 'jira:issue_created', 'issue': issue})):
        r = api.post(f'/v1/tenants/{t}/{path}', content=body(obj), headers=heads)
        assert r.status_code == 422, (path, r.status_code, r.text[:300])
        assert r.json()['error'] in ('BadIssue', 'RequestValidationError') and r.json()['detail'], r.text[:300]


def test_a_lone_surrogate_failing_validation_is_422_not_500(api, two_tenants):
    (t, key), _ = two_tenants
    r = api.post(f'/v1/tenants/{t}/triage', content=b'{"fields": {"summary": 5, "x": "\\ud800"}, "key": ["\\udfff"]}',
                 headers={**bearer(key), 'Content-Type': 'application/json'})
    assert r.status_code == 422, r.text


def test_training_unknown_tasks_is_422_naming_the_valid_ones(api, two_tenants, ignite):
    from alliedium.runs import list_runs
    from alliedium.serving.api import TrainRequest
    (t, key), _ = two_tenants
    r = api.post(f'/v1/tenants/{t}/train', json={'tasks': ['nonsense']}, headers=bearer(key))
    assert r.status_code == 422 and 'assignee' in r.text and 'priority' in r.text, r.text
    r = api.post(f'/v1/tenants/{t}/train', json={'tasks': ['priority'] * 90_000}, headers=bearer(key))
    assert r.status_code == 422, r.text[:300]
    assert list_runs(t, settings=ignite) == []  # nothing was started
    assert TrainRequest(tasks=['priority', 'labels', 'priority']).tasks == ['priority', 'labels']
    from alliedium.models import TASKS
    from alliedium.serving.api import TRAIN_TASKS
    assert TRAIN_TASKS == tuple(TASKS)  # the API's copy of the task names (the ingress does not import the models)


def test_another_tenants_job_is_not_touched(ignite):
    "Asking for another tenant's job id answers 404 and leaves that run as it was (not marked lost)."
    from alliedium.runs import finish_run, get_run, release_training, start_training
    (t, _), (u, key_u) = new_tenant(ignite), new_tenant(ignite)
    job = start_training(t, ignite)
    try:
        slow = TestClient(make_api(LocalBackend(ignite.model_copy(update=dict(train_timeout=1e-3)))))
        r = slow.get(f'/v1/tenants/{u}/jobs/{job}', headers=bearer(key_u))
        assert r.status_code == 404 and get_run(job, ignite)['status'] == 'running', r.text
    finally: finish_run(job, 'failed', {'error': 'test'}, settings=ignite); release_training(t, job, ignite)


def test_tenant_id_with_a_trailing_newline_is_refused(api, two_tenants):
    (t, key), _ = two_tenants
    r = api.get(f'/v1/tenants/{t}%0A/models', headers=bearer(key))
    assert r.status_code == 422 and r.json()['error'] == 'InvalidTenantId', r.text
