"""Fuzzing the HTTP API in this process (issue 17): generated bodies on every route, with the tenant's key, another
key and none, never answer 5xx. Seeded and bounded in `make test`; `make fuzz` (ALLIEDIUM_FUZZ=long) runs long."""
import json, os
from urllib.parse import quote
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, strategies as st

from alliedium.serving.api import LocalBackend, make_api
from test_fuzz_parsers import events, issues, json_values, text  # noqa: F401 (also loads the hypothesis profile)
from test_serving import bearer, new_tenant

SENT = Counter()
if os.environ.get('ALLIEDIUM_FUZZ') == 'long':  # make fuzz: 10,000 requests per test outlast the suite's timeout
    pytestmark = pytest.mark.timeout(0)


@pytest.fixture(scope='module')
def app(ignite):
    (t, key), (_, other) = new_tenant(ignite, 'fuzz'), new_tenant(ignite, 'fuzz')
    yield TestClient(make_api(LocalBackend(ignite)), raise_server_exceptions=False), t, key, other
    print(f"\nAPI requests sent: {dict(SENT)}, total {sum(SENT.values())}, 5xx: {SENT['5xx']}")


routes = st.sampled_from([('POST', 'triage'), ('POST', 'webhooks/jira'), ('POST', 'train'), ('GET', 'models'),
                          ('GET', 'jobs/x'), ('GET', 'jobs/{text}')])
bodies = issues | events | st.fixed_dictionaries({'tasks': st.lists(text, max_size=3) | json_values}) | json_values


@given(routes, bodies, st.sampled_from(['own', 'other', 'none']), text)
def test_no_request_answers_5xx(app, route, body, key_mode, word):
    client, tenant, key, other = app
    method, path = route
    if path == 'train' and key_mode == 'own':  # a valid request would start a real training: refused ones only
        tasks = body.get('tasks') if isinstance(body, dict) else None
        body = {'tasks': [*tasks, 'nonsense'] if isinstance(tasks, list) else tasks if tasks else ['nonsense']}
    headers = {**({'own': bearer(key), 'other': bearer(other)}.get(key_mode) or {}),
               'Content-Type': 'application/json'}
    url = f"/v1/tenants/{tenant}/{path.format(text=quote(word.encode('utf-8', 'surrogatepass'), safe=''))}"
    content = json.dumps(body).encode() if method == 'POST' else None
    r = client.request(method, url, content=content, headers=headers)
    SENT[path.split('/')[0]] += 1
    if r.status_code >= 500: SENT['5xx'] += 1
    assert r.status_code < 500, (method, url, body, r.status_code, r.text[:300])
    if r.status_code == 202: pytest.fail(f"a training started from {body!r}")


def test_null_fields_are_fields_not_given(app):
    "A field sent as null (schema-valid: `created: null`) is read as absent, not refused (schemathesis found it)."
    client, tenant, key, _ = app
    issue = {'fields': {'summary': 'NPE on start', 'created': None, 'updated': None, 'assignee': None}}
    r = client.post(f'/v1/tenants/{tenant}/triage', json=issue, headers=bearer(key))
    assert r.status_code == 409 and r.json()['status'] == 'untrained', r.text  # reached the models: none trained yet
    r = client.post(f'/v1/tenants/{tenant}/triage', json={'fields': {'summary': 'x', 'created': 'yesterday'}},
                    headers=bearer(key))
    assert r.status_code == 422 and r.json()['error'] == 'BadIssue', r.text  # a bad time is still refused


def test_every_error_status_is_documented_with_its_body(app):
    "The OpenAPI names each error status a tenant route can answer, with the body it has (schemathesis checks it)."
    client = app[0]
    doc = client.get('/openapi.json').json()
    for path, ops in doc['paths'].items():
        if not path.startswith('/v1/tenants/'): continue
        for op in ops.values():
            assert {'401', '403', '404', '409', '413', '422', '429', '503'} <= set(op['responses']), (path, op)
            assert op['responses']['422']['content']['application/json']['schema'] == {
                '$ref': '#/components/schemas/ErrorBody'}, (path, op['responses']['422'])
