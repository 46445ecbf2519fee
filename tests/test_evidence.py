"""Evidence with every suggestion (issue 19) through the HTTP API in this process, against the session's Ignite node
and real ZooKeeper tickets: `similar` and `duplicates` in the answer, `why` kept as the assignee model gives it, the
index learning a ticket as soon as it is ingested, and the batch route (order, per-issue errors, its limit)."""
import gzip, itertools, json, time, uuid

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from alliedium.ingest import ingest_tickets
from alliedium.jira import read_issues, sample_dir
from alliedium.serving.api import LocalBackend, TriageAnswer, make_api
from alliedium.tenants import create_tenant
from alliedium.training import train_tenant

N = 900  # ZooKeeper tickets ingested and trained on


def zk_issues(start=0, n=5) -> list[dict]:
    "Real ZooKeeper issues as Jira sent them (the bundled sample)."
    with gzip.open(sample_dir()/'Zookeeper.jsonl.gz', 'rt') as f:
        return [json.loads(x) for x in itertools.islice(f, start, start + n)]


def bearer(key): return {'Authorization': f'Bearer {key}'}


@pytest.fixture(scope='module')
def trained(ignite):
    "A tenant with N real tickets ingested and every task trained."
    t = f'evi-{uuid.uuid4().hex[:8]}'
    key = create_tenant(t, settings=ignite)
    ingest_tickets(t, itertools.islice(read_issues(sample_dir()/'Zookeeper.jsonl.gz', t), N), settings=ignite)
    train_tenant(t, settings=ignite)
    return t, key


@pytest.fixture(scope='module')
def backend(ignite): return LocalBackend(ignite)


@pytest.fixture(scope='module')
def api(backend): return TestClient(make_api(backend))


def triage(api, tenant, key, issue):
    r = api.post(f'/v1/tenants/{tenant}/triage', json=issue, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


def test_answer_has_similar_and_duplicates(api, trained):
    t, key = trained
    issue = zk_issues(N, 1)[0]   # a ticket filed after the trained ones
    a = triage(api, t, key, {'fields': {k: issue['fields'][k] for k in ('summary', 'description')}})
    assert 1 <= len(a['similar']) <= 10
    assert all(s['key'].startswith('ZOOKEEPER-') and 0 < s['score'] <= 1.0001 for s in a['similar'])
    assert [s['score'] for s in a['similar']] == sorted((s['score'] for s in a['similar']), reverse=True)
    assert set(a['similar'][0]) >= {'key', 'summary', 'created', 'score'}
    assert {d['key'] for d in a['duplicates']} <= {s['key'] for s in a['similar']}
    # its own text again, filed a day later: the most similar ticket is itself, which is then found a duplicate
    old = zk_issues(10, 1)[0]
    text = {k: old['fields'][k] for k in ('summary', 'description')}
    later = (pd.Timestamp(old['fields']['created']) + pd.Timedelta(days=1)).strftime('%Y-%m-%dT%H:%M:%S.000+0000')
    b = triage(api, t, key, {'fields': {**text, 'created': later}})
    assert b['similar'][0]['key'] == old['key'] and b['similar'][0]['score'] > 0.99
    assert b['duplicates'] and b['duplicates'][0]['key'] == old['key']
    # the same text filed today, years later: still the first, its score lowered by the recency factor
    c = triage(api, t, key, {'fields': text})
    assert c['similar'][0]['key'] == old['key'] and 0.5 <= c['similar'][0]['score'] < 0.75


def test_why_reaches_the_http_answer_as_the_model_gives_it(api, backend, trained):
    t, key = trained
    issue = {'fields': {'summary': 'Leader election fails after a network partition', 'reporter': {'name': 'phunt'}}}
    http = triage(api, t, key, issue)
    direct = backend.slots[t].models.triage(issue)   # the same loaded models, in this process
    assert [a['name'] for a in http['assignee']] == [a['name'] for a in direct['assignee']]
    assert any(a.get('why') for a in direct['assignee'])   # the model gives evidence ...
    assert [a.get('why', []) for a in http['assignee']] == [a.get('why', []) for a in direct['assignee']]   # ... kept
    kept = TriageAnswer.model_validate(dict(tenant=t, versions={}, assignee=[
        dict(name='phunt', score=0.5, why=['took 4 of the 10 most similar past tickets (ZOOKEEPER-1, ZOOKEEPER-2)'])]))
    assert kept.model_dump()['assignee'][0]['why'] == ['took 4 of the 10 most similar past tickets (ZOOKEEPER-1, '
                                                       'ZOOKEEPER-2)']


def test_openapi_describes_why_similar_duplicates_and_batch(api):
    doc = api.get('/openapi.json').json()
    schemas = doc['components']['schemas']
    assert schemas['AssigneeScored']['properties']['why']['type'] == 'array'
    assert {'similar', 'duplicates'} <= set(schemas['TriageAnswer']['properties'])
    assert 'post' in doc['paths']['/v1/tenants/{tenant}/triage/batch']


def test_a_webhook_ticket_is_similar_before_any_retrain(api, backend, trained):
    t, key = trained
    text = 'Quorum peer spins forever on a corrupted snapshot file of four gigabytes'
    assert all(s['key'] != 'ZOOKEEPER-77777' for s in triage(api, t, key, {'fields': {'summary': text}})['similar'])
    ev = {'webhookEvent': 'jira:issue_created', 'issue': {'key': 'ZOOKEEPER-77777', 'fields': {
        # (newer than every sample ticket, but not in the future: the API refuses events from the future)
        'summary': text, 'created': '2026-01-01T00:00:00.000+0000', 'updated': '2026-01-01T00:00:00.000+0000',
        'status': {'name': 'Open'}}}}
    assert api.post(f'/v1/tenants/{t}/webhooks/jira', json=ev, headers=bearer(key)).status_code == 200
    backend.slots[t].checked = float('-inf')   # the next request is past the poll interval
    top = triage(api, t, key, {'fields': {'summary': text}})['similar'][0]
    assert (top['key'], top['status']) == ('ZOOKEEPER-77777', 'Open')


def test_batch_answers_in_order_with_an_error_item_per_invalid_issue(api, trained):
    t, key = trained
    good = [{'key': i['key'], 'fields': {k: i['fields'][k] for k in ('summary', 'description')}}
            for i in zk_issues(N + 1, 3)]
    body = {'issues': [good[0], {'fields': {}}, good[1], 'not an issue', good[2]]}
    r = api.post(f'/v1/tenants/{t}/triage/batch', json=body, headers=bearer(key))
    assert r.status_code == 200, r.text
    items = r.json()['answers']
    assert len(items) == 5
    assert [('error' in x) for x in items] == [False, True, False, True, False]
    assert items[1]['error'] == 'RequestValidationError' and 'summary' in json.dumps(items[1]['detail'])
    for i, g in zip((0, 2, 4), good):
        single = triage(api, t, key, g)
        assert items[i]['assignee'] == single['assignee'] and items[i]['similar'] == single['similar']
        assert items[i]['rank_score'] == single['rank_score']


def test_batch_over_the_limit_and_empty_are_4xx(ignite, trained):
    t, key = trained
    small = TestClient(make_api(LocalBackend(ignite.model_copy(update={'serve_batch_max': 2}))))
    issue = {'fields': {'summary': 'x'}}
    r = small.post(f'/v1/tenants/{t}/triage/batch', json={'issues': [issue] * 3}, headers=bearer(key))
    assert (r.status_code, r.json()['error']) == (400, 'BatchTooLarge') and '2' in r.json()['detail']
    r = small.post(f'/v1/tenants/{t}/triage/batch', json={'issues': []}, headers=bearer(key))
    assert r.status_code == 422


@pytest.fixture(scope='module')
def ray_service(serve_url, ignite):
    "`serve/app.py` under the session's Ray Serve at '/evidence' (models in their own deployment, polling each 0.5 s)."
    import httpx
    from ray import serve
    from alliedium.config import Settings
    from alliedium.serving.api import settings_overrides
    from alliedium.serving.runtime import load_app
    s = Settings(**{**settings_overrides(ignite), 'serve_poll_seconds': 0.5, 'serve_replica_cpus': 0.1})
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s), name='evidence',
              route_prefix='/evidence')
    with httpx.Client(base_url=f'{serve_url}/evidence', timeout=120) as http: yield http
    serve.delete('evidence')


def test_batch_and_live_learning_under_ray_serve(ray_service, trained):
    "The batch goes through the ingress to the model deployment in one call; a replica learns a webhook's ticket."
    t, key = trained
    good = [{'fields': {k: i['fields'][k] for k in ('summary', 'description')}} for i in zk_issues(N + 5, 2)]
    r = ray_service.post(f'/v1/tenants/{t}/triage/batch', json={'issues': [good[0], {'fields': {}}, good[1]]},
                         headers=bearer(key))
    assert r.status_code == 200, r.text
    items = r.json()['answers']
    assert [('error' in x) for x in items] == [False, True, False] and all(items[i]['similar'] for i in (0, 2))
    single = ray_service.post(f'/v1/tenants/{t}/triage', json=good[1], headers=bearer(key)).json()
    assert single['similar'] == items[2]['similar'] and single['assignee'] == items[2]['assignee']
    text = 'Ensemble loses quorum whenever the transaction log directory is on a full tmpfs'
    now = time.strftime('%Y-%m-%dT%H:%M:%S.000+0000', time.gmtime())
    ev = {'webhookEvent': 'jira:issue_created', 'issue': {'key': 'ZOOKEEPER-88888', 'fields': {
        'summary': text, 'created': now, 'updated': now}}}
    assert ray_service.post(f'/v1/tenants/{t}/webhooks/jira', json=ev, headers=bearer(key)).status_code == 200
    t0, keys = time.monotonic(), []
    while time.monotonic() - t0 < 120 and 'ZOOKEEPER-88888' not in keys:   # the replica's next poll learns it
        a = ray_service.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': text}}, headers=bearer(key))
        keys = [s['key'] for s in a.json()['similar']]
        time.sleep(0.1)
    print(f"a webhook's ticket in similar through Ray Serve after {time.monotonic() - t0:.2f} s (poll 0.5 s)")
    assert keys[0] == 'ZOOKEEPER-88888'
