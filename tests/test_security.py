"""Issue 16 against the session's Ignite node, in this process (`make_api` with `LocalBackend`) and under real
Ray Serve: signed artifacts (a row rewritten without the key is refused), signed and fresh webhooks, revocable
keys, rate limits, and answers without internal addresses."""
import hashlib, json, re, stat, subprocess, time, uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from alliedium.config import Settings, server_key
from alliedium.features import OneHot
from alliedium.ignite import free_port, ignite_client
from alliedium.registry import ArtifactRefused, load_active_models, load_model, promote, register_model
from alliedium.serving.api import KeyCache, LocalBackend, make_api, settings_overrides
from alliedium.tenants import (create_tenant, key_id_of, new_webhook_secret, remove_webhook_secret, revoke_keys,
                               rotate_keys, webhook_signature)

from test_serving import bearer, sample_issues



def shows_address(text, port) -> bool:
    "Whether an answer shows an internal address: an IP, the port of the Ignite node it tried, a file path."
    return bool(re.search(r'\b\d{1,3}(\.\d{1,3}){3}\b|localhost|/tmp/|/var/|/secrets/', text)) or str(port) in text


def new_tenant(settings, prefix='sec'):
    t = f'{prefix}-{uuid.uuid4().hex[:8]}'
    return t, create_tenant(t, settings=settings)


def app(settings, **overrides):
    "The API in this process, with these settings changed."
    return TestClient(make_api(LocalBackend(settings.model_copy(update=overrides))))


def _rows(settings, tenant):
    with ignite_client(settings) as c:
        return list(c.sql('SELECT task, version, artifact, format FROM ALLIEDIUM.MODEL WHERE tenant_id = ?',
                          query_args=[tenant]))


def _rewrite(settings, tenant, task, version, artifact, fmt):
    "What someone with storage access (no key) can do: rewrite a MODEL row."
    with ignite_client(settings) as c:
        c.sql('UPDATE ALLIEDIUM.MODEL SET artifact = ?, format = ? WHERE tenant_id = ? AND task = ? AND version = ?',
              query_args=[artifact, fmt, tenant, task, version])


# Signed artifacts

def test_the_artifact_key_lives_outside_ignite_and_the_repository(ignite):
    key = server_key('artifact', ignite)
    path = ignite.secrets_path/'artifact.key'
    assert path.read_text().strip().encode() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    repo_key = Settings().home/'var'/'secrets'/'artifact.key'   # where it lands in a checkout: ignored by git
    ignored = subprocess.run(['git', 'check-ignore', '-q', str(repo_key)], cwd=Settings().home)
    assert ignored.returncode == 0
    t, _ = new_tenant(ignite)
    register_model(t, 'priority', OneHot().fit(['a']), {}, ignite)
    (_, _, data, fmt), = _rows(ignite, t)
    assert key.decode() not in fmt and key not in bytes(data)


def test_a_forged_artifact_with_a_recomputed_sha256_is_refused(ignite):
    t, key = new_tenant(ignite)
    promote(t, 'priority', register_model(t, 'priority', OneHot().fit(['a']), {}, ignite), ignite)
    (_, v, _, fmt), = _rows(ignite, t)
    kind, sha, mac = fmt.split(';')
    # the forger's model: valid skops, its sha256 recomputed, the old signature kept (or dropped)
    forged = OneHot().fit(['evil'])
    import skops.io as sio
    data = sio.dumps(forged)
    digest = hashlib.sha256(data).hexdigest()
    for fake in (f'{kind};sha256={digest};{mac}', f'{kind};sha256={digest}'):
        _rewrite(ignite, t, 'priority', v, data, fake)
        with pytest.raises(ArtifactRefused, match='signature does not match'): load_model(t, 'priority', v, ignite)
        with pytest.raises(ArtifactRefused, match='signature'): load_active_models(t, ignite)
    r = app(ignite).post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'x'}}, headers=bearer(key))
    assert r.status_code == 409 and r.json()['error'] == 'ArtifactRefused' and 'signature' in r.json()['detail']
    assert r.json()['status'] == 'untrained'   # and what to do: train again


def test_another_tenants_signed_artifact_is_refused(ignite):
    "A signed row copied whole from one tenant to another does not load: the signature names its tenant and task."
    (a, _), (b, _) = new_tenant(ignite), new_tenant(ignite)
    register_model(a, 'priority', OneHot().fit(['from-a']), {}, ignite)
    register_model(b, 'priority', OneHot().fit(['from-b']), {}, ignite)
    (_, _, data, fmt), = _rows(ignite, a)
    _rewrite(ignite, b, 'priority', 1, bytes(data), fmt)
    with pytest.raises(ArtifactRefused, match='signature'): load_model(b, 'priority', 1, ignite)
    assert load_model(a, 'priority', 1, ignite)[1].index_ == {'from-a': 0}


def test_unsigned_artifacts_of_the_older_format_ask_for_a_retrain(ignite):
    t, _ = new_tenant(ignite)
    register_model(t, 'priority', OneHot().fit(['a']), {}, ignite)
    (_, _, data, fmt), = _rows(ignite, t)
    old = 'skops/4;' + fmt.split(';')[1]   # as the release before this one wrote it
    _rewrite(ignite, t, 'priority', 1, bytes(data), old)
    with pytest.raises(ArtifactRefused, match='older alliedium, unsigned.*alliedium train'):
        load_model(t, 'priority', 1, ignite)


# Webhooks

def _event(issue, kind='jira:issue_updated', **extra):
    return json.dumps({'webhookEvent': kind, 'timestamp': int(time.time() * 1000), 'issue': issue, **extra}).encode()


def _signed(secret, body):
    return {'X-Hub-Signature': webhook_signature(secret, body), 'Content-Type': 'application/json'}


def test_webhooks_of_a_tenant_with_a_secret_must_be_signed(ignite):
    (t, key), (_, other_key) = new_tenant(ignite), new_tenant(ignite)
    secret = new_webhook_secret(t, ignite)
    api, url = app(ignite), f'/v1/tenants/{t}/webhooks/jira'
    issue = sample_issues(n=1)[0]
    body = _event(issue)
    plain = {'Content-Type': 'application/json'}
    cases = {'unsigned': plain, 'unsigned, with the key': {**plain, **bearer(key)},
             'wrong secret': _signed('whsec_guess', body), 'another body': _signed(secret, body + b' '),
             'not hex': {**plain, 'X-Hub-Signature': 'sha256=zz'}, 'no scheme': {**plain, 'X-Hub-Signature': 'x'}}
    for case, headers in cases.items():
        r = api.post(url, content=body, headers=headers)
        assert r.status_code == 401 and r.json()['error'] == 'Unauthorized', (case, r.text)
    r = api.post(url, content=body, headers=_signed(secret, body))   # as Jira sends it: no Bearer key
    assert r.status_code == 200 and r.json()['result'] == 'inserted', r.text
    r = api.post(url, content=body, headers={**_signed(secret, body), **bearer(key)})
    assert r.status_code == 200 and r.json()['result'] == 'unchanged', r.text
    r = api.post(url, content=body, headers={**_signed(secret, body), **bearer(other_key)})
    assert r.status_code == 403, r.text   # a key sent along must be the tenant's
    bad = b'{"webhookEvent": "jira:issue_updated", "issue": '
    r = api.post(url, content=bad, headers=_signed(secret, bad))   # signed, then parsed: a bad body is 422
    assert r.status_code == 422 and r.json()['error'] == 'RequestValidationError', r.text
    # without the secret, the tenant's key authenticates webhooks again (a fresh app: secrets are cached)
    assert remove_webhook_secret(t, ignite)
    r = app(ignite).post(url, content=body, headers={**plain, **bearer(key)})
    assert r.status_code == 200 and r.json()['result'] == 'unchanged', r.text


def test_events_from_the_future_are_422_and_leave_nothing(ignite):
    from alliedium.ingest import load_tickets
    t, key = new_tenant(ignite)
    api, url = app(ignite), f'/v1/tenants/{t}/webhooks/jira'
    issue = sample_issues(n=2)[1]
    post = lambda body: api.post(url, content=body, headers={**bearer(key), 'Content-Type': 'application/json'})
    gone = {'key': issue['key'], 'fields': {}}
    r = post(_event(gone, 'jira:issue_deleted', timestamp=4102444800000))   # 2100-01-01: a tombstone for ever
    assert r.status_code == 422 and r.json()['error'] == 'FutureEvent' and 'timestamp' in r.json()['detail'], r.text
    soon = time.strftime('%Y-%m-%dT%H:%M:%S.000+0000', time.gmtime(time.time() + 3600))
    r = post(_event({**issue, 'fields': {**issue['fields'], 'updated': soon}}))
    assert r.status_code == 422 and 'updated' in r.json()['detail'], r.text
    assert issue['key'] not in set(load_tickets(t, ignite).issue_key)
    r = post(_event(issue, 'jira:issue_created'))   # the real event still goes in
    assert r.status_code == 200 and r.json()['result'] == 'inserted', r.text
    near = time.strftime('%Y-%m-%dT%H:%M:%S.000+0000', time.gmtime(time.time() + 60))   # a clock a minute ahead
    r = post(_event({**issue, 'fields': {**issue['fields'], 'updated': near}}))
    assert r.status_code == 200 and r.json()['result'] == 'updated', r.text


# Keys

def test_a_revoked_key_is_refused_within_the_key_cache_ttl(ignite):
    ttl = 1.0
    t, key = new_tenant(ignite)
    api = app(ignite, serve_key_cache_seconds=ttl)
    assert api.get(f'/v1/tenants/{t}/models', headers=bearer(key)).status_code == 200   # now remembered
    assert revoke_keys(t, key_id_of(key), settings=ignite) == [key_id_of(key)]
    time.sleep(ttl + 0.2)
    r = api.get(f'/v1/tenants/{t}/models', headers=bearer(key))
    assert r.status_code == 401 and 'revoked' in r.json()['detail'], r.text


def test_rotation_keeps_the_old_key_for_the_grace_period_only(ignite):
    t, old = new_tenant(ignite)
    api = app(ignite, serve_key_cache_seconds=60)
    new, retiring = rotate_keys(t, grace_hours=5 / 3600, settings=ignite)   # five seconds
    assert retiring == [key_id_of(old)]
    for k in (old, new): assert api.get(f'/v1/tenants/{t}/models', headers=bearer(k)).status_code == 200
    time.sleep(5.5)   # the old key is remembered only as long as it works, not the 60 s of the cache
    assert api.get(f'/v1/tenants/{t}/models', headers=bearer(old)).status_code == 401
    assert api.get(f'/v1/tenants/{t}/models', headers=bearer(new)).status_code == 200


def test_unknown_keys_are_remembered_briefly(ignite):
    keys = KeyCache(ignite.model_copy(update=dict(serve_key_miss_seconds=30)))
    bogus = 'ak_' + uuid.uuid4().hex
    assert keys.lookup(bogus) is None
    assert keys.cached(keys.digest(bogus), time.monotonic()) == (True, None)   # next time: no Ignite lookup
    t, key = new_tenant(ignite)
    assert keys.lookup(key) == t and keys.cached(keys.digest(key), time.monotonic()) == (True, t)
    keys.MAX = 3
    for i in range(10): keys.lookup(f'ak_bogus-{i}')
    assert len(keys.misses) == 3   # random keys cannot fill the memory


# Abuse limits

def test_a_burst_beyond_the_key_limit_is_429_with_retry_after(ignite):
    (t, key), (u, key_u) = new_tenant(ignite), new_tenant(ignite)
    api = app(ignite, rate_key_per_second=0.001, rate_key_burst=3, rate_address_per_second=0)   # (no refill to speak of)
    codes = [api.get(f'/v1/tenants/{t}/models', headers=bearer(key)).status_code for _ in range(3)]
    r = api.get(f'/v1/tenants/{t}/models', headers=bearer(key))
    assert codes == [200] * 3 and r.status_code == 429, (codes, r.text)
    assert r.json()['error'] == 'RateLimited' and 'API key' in r.json()['detail']
    assert int(r.headers['retry-after']) >= 1 and r.json()['retry_after'] == int(r.headers['retry-after'])
    assert api.get(f'/v1/tenants/{u}/models', headers=bearer(key_u)).status_code == 200   # another key is not held
    for bogus in ('ak_x', 'ak_x', 'ak_x', 'ak_x'):   # unknown keys count too
        r = api.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'x'}}, headers=bearer(bogus))
    assert r.status_code == 429


def test_a_burst_beyond_the_address_limit_is_429_on_every_route(ignite):
    api = app(ignite, rate_address_per_second=0.001, rate_address_burst=5, rate_key_per_second=0)
    codes = [api.get('/healthz').status_code for _ in range(5)]
    r = api.get('/openapi.json')
    assert codes == [200] * 5 and r.status_code == 429 and 'client address' in r.json()['detail'], (codes, r.text)
    r = api.post('/v1/tenants/t/triage', json={'fields': {'summary': 'x'}}, headers=bearer(f'ak_{uuid.uuid4().hex}'))
    assert r.status_code == 429 and 'retry-after' in r.headers


# No internal addresses

def test_healthz_is_cached_and_errors_show_no_host_or_port(ignite):
    api = app(ignite, serve_health_cache_seconds=3600)
    first, again = api.get('/healthz').json(), api.get('/healthz').json()
    assert first['ignite']['ok'] and first == again   # the same check: no Ignite connection per request
    port = free_port()
    down = app(ignite.model_copy(update=dict(ignite_hosts=f'127.0.0.1:{port}', ignite_timeout=3)))
    r = down.get('/healthz')
    assert r.status_code == 503 and not shows_address(r.text, port), r.text
    r = down.post('/v1/tenants/t/triage', json={'fields': {'summary': 'x'}}, headers=bearer('ak_x'))
    assert r.status_code == 503 and r.json()['error'] == 'IgniteUnavailable', r.text
    assert not shows_address(r.text, port), r.text
    assert '<address>' in r.json()['detail']


# The same under Ray Serve

@pytest.fixture(scope='module')
def guarded(serve_url, ignite):
    "The triage app under Serve at '/sec' with small limits, and with an unreachable Ignite at '/sec-down'."
    from ray import serve
    from alliedium.serving.runtime import load_app
    s = Settings(**{**settings_overrides(ignite), 'serve_key_cache_seconds': 1.0, 'serve_replica_cpus': 0.1,
                    'serve_models_in_ingress': True, 'rate_key_per_second': 0.001, 'rate_key_burst': 6,
                    'rate_address_per_second': 0.01, 'rate_address_burst': 100})
    port = free_port()
    down = Settings(**{**settings_overrides(s), 'ignite_hosts': f'127.0.0.1:{port}', 'ignite_timeout': 3})
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s), name='sec', route_prefix='/sec')
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(down)), s),
              name='sec-down', route_prefix='/sec-down')
    with httpx.Client(base_url=serve_url, timeout=120) as http: yield http, port
    serve.delete('sec-down'); serve.delete('sec')


def test_serve_webhooks_signed_or_401(guarded, ignite):
    guarded, _ = guarded
    t, key = new_tenant(ignite)
    secret = new_webhook_secret(t, ignite)
    body, url = _event(sample_issues(n=1)[0]), f'/sec/v1/tenants/{t}/webhooks/jira'
    r = guarded.post(url, content=body, headers={**bearer(key), 'Content-Type': 'application/json'})
    assert r.status_code == 401, r.text
    r = guarded.post(url, content=body, headers=_signed('whsec_wrong', body))
    assert r.status_code == 401, r.text
    r = guarded.post(url, content=body, headers=_signed(secret, body))
    assert r.status_code == 200 and r.json()['result'] == 'inserted', r.text
    future = _event({'key': 'ZOOKEEPER-1', 'fields': {}}, 'jira:issue_deleted', timestamp=4102444800000)
    r = guarded.post(url, content=future, headers=_signed(secret, future))
    assert r.status_code == 422 and r.json()['error'] == 'FutureEvent', r.text


def test_serve_revoked_key_is_401_within_the_ttl(guarded, ignite):
    guarded, _ = guarded
    t, key = new_tenant(ignite)
    assert guarded.get(f'/sec/v1/tenants/{t}/models', headers=bearer(key)).status_code == 200
    revoke_keys(t, every=True, settings=ignite)
    time.sleep(1.2)   # the app's serve_key_cache_seconds, and a little
    r = guarded.get(f'/sec/v1/tenants/{t}/models', headers=bearer(key))
    assert r.status_code == 401, r.text


def test_serve_burst_is_429_with_retry_after(guarded, ignite):
    guarded, _ = guarded
    t, key = new_tenant(ignite)
    codes = [guarded.get(f'/sec/v1/tenants/{t}/models', headers=bearer(key)).status_code for _ in range(8)]
    assert codes == [200] * 6 + [429] * 2, codes
    r = guarded.get(f'/sec/v1/tenants/{t}/models', headers=bearer(key))
    assert r.status_code == 429 and int(r.headers['retry-after']) >= 1, r.text
    codes = [guarded.get('/sec/healthz').status_code for _ in range(150)]   # one address, past its burst of 100
    assert 429 in codes, codes


def test_serve_health_and_503_show_no_host_or_port(guarded):
    http, port = guarded
    r = http.get('/sec-down/healthz')
    assert r.status_code == 503 and not shows_address(r.text, port), r.text
    r = http.post('/sec-down/v1/tenants/t/triage', json={'fields': {'summary': 'x'}}, headers=bearer('ak_x'))
    assert r.status_code == 503 and not shows_address(r.text, port), r.text
