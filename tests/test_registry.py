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
