"""The model registry on the session's Ignite node: one active version under concurrent promotions, refusal of
tampered or foreign artifacts, a tenant's active models, promote-if-not-worse, hooks."""
import hashlib, threading, uuid

import pytest

from alliedium.features import OneHot
from alliedium.ignite import ignite_client
from alliedium import registry
from alliedium.models.triage import load_tenant_models
from alliedium.registry import (ArtifactRefused, NoModelYet, active_versions, dump_artifact, list_models,
                                load_active_models, load_model, promote, register_model, rollback)
from alliedium.training import train_frame


class Foreign:
    "A class no model of alliedium contains."


def _tenant(prefix='reg'): return f'{prefix}-{uuid.uuid4().hex[:8]}'


def _active(tenant, task, settings):
    with ignite_client(settings) as c:
        return [v for v, in c.sql('SELECT version FROM ALLIEDIUM.MODEL WHERE tenant_id = ? AND task = ? '
                                  'AND active = TRUE',
                                  query_args=[tenant, task])]


def test_exactly_one_active_version_under_concurrent_promotions(ignite):
    tenant = _tenant()
    versions = [register_model(tenant, 'priority', OneHot().fit([str(i)]), {'i': i}, ignite) for i in range(6)]
    assert versions == list(range(1, 7))
    errors = []
    for _ in range(3):
        barrier = threading.Barrier(len(versions))
        def run(v):
            try:
                with ignite_client(ignite) as c:
                    barrier.wait()
                    promote(tenant, 'priority', v, client=c)
            except Exception as e: errors.append(e)
        threads = [threading.Thread(target=run, args=(v,)) for v in versions]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not errors
        assert len(_active(tenant, 'priority', ignite)) == 1
    assert active_versions(tenant, ignite)['priority'] in versions


def test_concurrent_registrations_get_distinct_versions(ignite):
    tenant, got = _tenant(), []
    def run():
        with ignite_client(ignite) as c: got.append(register_model(tenant, 'labels', OneHot().fit(['a']), {}, client=c))
    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert sorted(got) == [1, 2, 3, 4, 5]


def _update(settings, tenant, task, version, **cols):
    sets = ', '.join(f'{k} = ?' for k in cols)
    with ignite_client(settings) as c:
        c.sql(f'UPDATE ALLIEDIUM.MODEL SET {sets} WHERE tenant_id = ? AND task = ? AND version = ?',
              query_args=[*cols.values(), tenant, task, version])


def test_tampered_or_foreign_artifacts_are_refused(ignite):
    tenant = _tenant()
    v = register_model(tenant, 'components', OneHot().fit(['a']), {}, ignite)
    assert load_model(tenant, 'components', v, ignite)[1].index_ == {'a': 0}
    data, fmt = dump_artifact(OneHot().fit(['b']))
    _update(ignite, tenant, 'components', v, artifact=data[:-10] + b'0123456789')   # bytes changed, digest kept
    with pytest.raises(ArtifactRefused, match='tampered'): load_model(tenant, 'components', v, ignite)
    _update(ignite, tenant, 'components', v, artifact=b'\x80\x04pickle', format='pickle')   # someone else's format
    with pytest.raises(ArtifactRefused, match='not written by alliedium'): load_model(tenant, 'components', v, ignite)
    # a valid skops archive holding a type alliedium does not trust, even when signed with the installation's key
    foreign, signed = dump_artifact({'model': Foreign()}, f'{tenant}/components', ignite)
    digest = hashlib.sha256(foreign).hexdigest()
    _update(ignite, tenant, 'components', v, artifact=foreign, format=signed)
    with pytest.raises(ArtifactRefused, match='does not trust'): load_model(tenant, 'components', v, ignite)
    _update(ignite, tenant, 'components', v, format=f"skops/1;sha256={digest}")   # an older release's
    with pytest.raises(ArtifactRefused, match='older alliedium'): load_model(tenant, 'components', v, ignite)


def test_no_model_yet_is_a_clear_error(ignite):
    with pytest.raises(NoModelYet, match='alliedium train'): load_active_models(_tenant(), ignite)
    with pytest.raises(NoModelYet, match='alliedium train'): load_tenant_models(_tenant(), ignite)


def test_active_models_are_the_promoted_verified_artifacts(ignite):
    tenant = _tenant()
    for task, values in (('components', ['a']), ('labels', ['b'])):
        register_model(tenant, task, OneHot().fit(values), {'task': task}, ignite)
        promote(tenant, task, register_model(tenant, task, OneHot().fit(values + ['c']), {'v': 2}, ignite), ignite)
    models, versions, metrics = load_active_models(tenant, ignite)
    assert versions == {'components': 2, 'labels': 2} and metrics == {'components': {'v': 2}, 'labels': {'v': 2}}
    assert models['components'].index_ == {'a': 0, 'c': 1} and models['labels'].index_ == {'b': 0, 'c': 1}
    _update(ignite, tenant, 'labels', 2, format='skops/2;sha256=00')   # one artifact the registry refuses: no models
    with pytest.raises(ArtifactRefused, match='older alliedium'): load_active_models(tenant, ignite)


def test_the_registry_imports_no_model_module():
    "The dependency points one way: `alliedium.models.triage` reads the registry, the registry imports no model."
    import ast, inspect
    tree = ast.parse(inspect.getsource(registry))
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [f"{getattr(n, 'module', None) or ''}.{a.name}".strip('.') for n in nodes for a in n.names]
    assert 'config.AlliediumError' in names                     # relative imports are seen
    assert not [n for n in names if n.startswith(('models', 'alliedium.models'))], names


def test_promote_hooks_run_after_commit_and_rollback(ignite):
    tenant, seen = _tenant(), []
    hook = lambda t, task, v: seen.append((t, task, v, active_versions(t, ignite).get(task)))
    registry.on_promote.append(hook)
    try:
        v1 = register_model(tenant, 'priority', OneHot().fit(['a']), {}, ignite)
        v2 = register_model(tenant, 'priority', OneHot().fit(['b']), {}, ignite)
        promote(tenant, 'priority', v1, ignite); promote(tenant, 'priority', v2, ignite)
        assert rollback(tenant, 'priority', ignite) == v1
    finally: registry.on_promote.remove(hook)
    assert seen == [(tenant, 'priority', 1, 1), (tenant, 'priority', 2, 2), (tenant, 'priority', 1, 1)]


def test_promote_only_if_not_worse_on_the_newest_tickets(ignite, zk_tickets):
    tenant, df = _tenant('train'), zk_tickets.head(900)
    first = train_frame(tenant, df, ['priority'], ignite)['priority']
    assert first['promoted'] and first['version'] == 1
    # an active version that saw every ticket and scored far better: the new one must not replace it
    better = register_model(tenant, 'priority', load_model(tenant, 'priority', 1, ignite)[1],
                            {'check': {'macro_f1': 0.99}, 'trained_until': '2100-01-01'}, ignite)
    promote(tenant, 'priority', better, ignite)
    worse = train_frame(tenant, df, ['priority'], ignite)['priority']
    assert not worse['promoted'] and 'worse' in worse['reason']
    assert active_versions(tenant, ignite)['priority'] == better
    row = [r for r in list_models(tenant, 'priority', ignite) if r['version'] == worse['version']][0]
    assert not row['active'] and 'worse' in row['metrics']['decision']['reason']
    # with a tolerance that covers the gap it is promoted
    assert train_frame(tenant, df, ['priority'], ignite, tolerance=1.0)['priority']['promoted']


def _digest(tenant, task, settings):
    fmt = list_models(tenant, task, settings)[0]['format']
    return registry._checked_digest(fmt, task, f'{tenant}/{task}', settings)


def test_model_cache_answers_as_the_registrys_artifacts(ignite, zk_tickets):
    "Real models: loaded through the node-local cache they answer real issues exactly as loaded through skops."
    from alliedium.jira import jira_file
    from alliedium.models.triage import TenantModels
    import gzip, itertools, json
    tenant = _tenant('cache')
    train_frame(tenant, zk_tickets, None, ignite)
    off = ignite.model_copy(update=dict(model_cache_mb=0))
    cache = registry.ModelFileCache(ignite)
    tasks = sorted(active_versions(tenant, ignite))
    assert [cache.get(_digest(tenant, t, ignite), f'{tenant}/{t}') for t in tasks] == [None] * len(tasks)
    plain = load_active_models(tenant, off)
    load_active_models(tenant, ignite)                      # from Ignite, then cached
    cached = [cache.get(_digest(tenant, t, ignite), f'{tenant}/{t}') for t in tasks]
    assert all(m is not None for m in cached), tasks       # every task's model has a cached copy
    again = load_active_models(tenant, ignite)              # from the copies
    assert again[1:] == plain[1:]
    with gzip.open(jira_file('Zookeeper'), 'rt') as f: issues = [json.loads(l) for l in itertools.islice(f, 1500, 1520)]
    a, b = TenantModels(tenant, *plain, settings=off), TenantModels(tenant, *again, settings=ignite)
    assert a.triage_many(issues) == b.triage_many(issues)
    assert [a.triage(i) for i in issues[:3]] == [b.triage(i) for i in issues[:3]]


def test_forged_or_foreign_cache_files_are_refused(ignite):
    tenant, other = _tenant('cache'), _tenant('cache')
    for t, values in ((tenant, ['a', 'b']), (other, ['evil'])):
        promote(t, 'labels', register_model(t, 'labels', OneHot().fit(values), {}, ignite), ignite)
        assert load_active_models(t, ignite)[0]['labels'].index_ == {v: i for i, v in enumerate(values)}
    cache, d = registry.ModelFileCache(ignite), _digest(tenant, 'labels', ignite)
    path = cache.path(d, f'{tenant}/labels')
    genuine = path.read_bytes()
    # another tenant's genuine copy under this one's name; the same re-signed with a guessed key; a changed byte
    n = len(registry.FAST_FORMAT)
    theirs = cache.path(_digest(other, 'labels', ignite), f'{other}/labels').read_bytes()
    for forged in (theirs, theirs[:n] + hashlib.sha256(b'guess').digest() + theirs[n + 32:],
                   genuine[:-1] + bytes([genuine[-1] ^ 1])):
        path.write_bytes(forged)
        with pytest.raises(ArtifactRefused, match='signature'): registry.load_fast(forged, d, f'{tenant}/labels')
        assert cache.get(d, f'{tenant}/labels') is None and not path.exists()     # refused and deleted
        assert load_active_models(tenant, ignite)[0]['labels'].index_ == {'a': 0, 'b': 1}  # the artifact, again
        assert path.exists()
    # signed with the installation's key (a cache writer's bug, or the key stolen): its types are still audited
    # before anything is built
    good = registry.dump_fast(OneHot().fit(['x']), d, f'{tenant}/labels', ignite)
    body = good[n + 32:].replace(b'"alliedium.features.OneHot"', b'"subprocess.Popen"'.ljust(27))  # same length
    assert b'subprocess.Popen' in body
    evil = registry.FAST_FORMAT + registry._cache_mac(d, f'{tenant}/labels', body, ignite) + body
    with pytest.raises(ArtifactRefused, match='does not trust'): registry.load_fast(evil, d, f'{tenant}/labels', 'x', ignite)


def test_model_cache_is_bounded_in_bytes(ignite):
    import tempfile
    from pathlib import Path
    s = ignite.model_copy(update=dict(var_dir=Path(tempfile.mkdtemp()), secrets_dir=ignite.secrets_path))
    tenants = [_tenant('cache') for _ in range(5)]
    for i, t in enumerate(tenants):
        promote(t, 'labels', register_model(t, 'labels', OneHot().fit([f'v{j}' for j in range(50 * (i + 1))]), {}, s), s)
    cache = registry.ModelFileCache(s)
    for t in tenants: load_active_models(t, s)
    sizes = {t: cache.path(_digest(t, 'labels', s), f'{t}/labels').stat().st_size for t in tenants}
    limit = sizes[tenants[-1]] + sizes[tenants[-2]] + 1
    small = s.model_copy(update=dict(model_cache_mb=limit / 2**20))
    load_active_models(tenants[-2], small)                  # used last: kept first
    registry.ModelFileCache(small).evict()
    kept = [t for t in tenants if cache.path(_digest(t, 'labels', s), f'{t}/labels').exists()]
    assert sum(sizes[t] for t in kept) <= limit and tenants[-2] in kept and len(kept) < len(tenants)
    for t in tenants:                                        # an evicted tenant loads from Ignite (and is cached again)
        assert len(load_active_models(t, small)[0]['labels'].index_) == 50 * (tenants.index(t) + 1)
    assert sum(p.stat().st_size for p in cache.folder.glob('*.model')) <= limit
