"Tenants and API keys on the session's Ignite node: keys shown once, only hashes stored, unknown tenants refused."
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from alliedium.ignite import ignite_client
from alliedium.tenants import (InvalidTenantId, TenantExists, UnknownTenant, create_api_key, create_tenant, key_hash,
                               list_tenants, require_tenant, revoke_api_key, tenant_exists, tenant_for_key)


def test_create_tenant_stores_only_the_key_hash(ignite, tenant_id):
    key = create_tenant(tenant_id, 'Acme', settings=ignite)
    with ignite_client(ignite) as c:
        rows = list(c.sql('SELECT key_hash, tenant_id FROM ALLIEDIUM.API_KEY WHERE tenant_id = ?',
                          query_args=[tenant_id]))
        stored = [str(v) for r in c.sql('SELECT * FROM ALLIEDIUM.API_KEY') for v in r]
    assert rows == [[key_hash(key), tenant_id]]
    assert not any(key in v for v in stored)
    assert tenant_for_key(key, ignite) == tenant_id and tenant_exists(tenant_id, ignite)
    listed = next(t for t in list_tenants(ignite) if t['id'] == tenant_id)
    assert {'id': tenant_id, 'name': 'Acme'}.items() <= listed.items()
    assert type(listed['created_at']).__name__ == 'datetime'   # not pyignite's (datetime, nanoseconds) pair


def test_concurrent_creation_has_one_winner(ignite, tenant_id):
    "Four connections create the same tenant at once (a barrier lines them up): one key, three TenantExists."
    for attempt_round in range(3):
        tid, barrier = f'{tenant_id}-{attempt_round}', threading.Barrier(4)
        def attempt(_):
            with ignite_client(ignite) as c:
                barrier.wait(30)
                try: return create_tenant(tid, settings=ignite, client=c)
                except TenantExists: return None
        with ThreadPoolExecutor(4) as pool: keys = list(pool.map(attempt, range(4)))
        winners = [k for k in keys if k is not None]
        assert len(winners) == 1 and tenant_for_key(winners[0], ignite) == tid, keys
        with ignite_client(ignite) as c:
            n, = next(iter(c.sql('SELECT COUNT(*) FROM ALLIEDIUM.API_KEY WHERE tenant_id = ?', query_args=[tid])))
        assert n == 1


def test_keys_open_their_own_tenant_only_and_can_be_revoked(ignite, tenant_id):
    a, b = create_tenant(tenant_id, settings=ignite), create_tenant(tenant_id + 'b', settings=ignite)
    a2 = create_api_key(tenant_id, ignite)
    assert [tenant_for_key(k, ignite) for k in (a, b, a2)] == [tenant_id, tenant_id + 'b', tenant_id]
    assert revoke_api_key(a, ignite)
    assert tenant_for_key(a, ignite) is None and tenant_for_key(a2, ignite) == tenant_id
    assert tenant_for_key('', ignite) is None and tenant_for_key('ak_' + 'x' * 43, ignite) is None


def test_unknown_and_invalid_tenants_are_clear_errors(ignite, tenant_id):
    with pytest.raises(UnknownTenant, match='alliedium tenants create'): require_tenant(tenant_id, ignite)
    with pytest.raises(UnknownTenant): create_api_key(tenant_id, ignite)
    with pytest.raises(InvalidTenantId, match='a-z'): create_tenant('Bad Tenant!', settings=ignite)


def test_tenant_ids_are_matched_whole():
    "`$` also matches before a final newline: 'acme\\n' must not pass for a valid id."
    from alliedium.tenants import check_tenant_id
    assert check_tenant_id('acme') == 'acme'
    for bad in ('acme\n', 'Acme', '-acme', 'a' * 65, ''):
        with pytest.raises(InvalidTenantId): check_tenant_id(bad)


# Issue 16: keys by public id, rotation with a grace period, webhook secrets

def test_keys_are_listed_revoked_and_rotated_by_public_id(ignite, tenant_id):
    from datetime import datetime, timezone
    from alliedium.tenants import UnknownKey, key_id_of, key_owner, list_keys, revoke_keys, rotate_keys
    first = create_tenant(tenant_id, settings=ignite)
    second = create_api_key(tenant_id, ignite)
    assert tenant_for_key(second, ignite) == tenant_id   # a lookup records the key's use
    listed = {k['key_id']: k for k in list_keys(tenant_id, ignite)}
    assert set(listed) == {key_id_of(first), key_id_of(second)} and all(k['state'] == 'active' for k in listed.values())
    assert listed[key_id_of(second)]['last_used_at'] is not None and listed[key_id_of(first)]['last_used_at'] is None
    assert not any(first in str(v) or key_hash(first) in str(v) for k in listed.values() for v in k.values())
    new, retiring = rotate_keys(tenant_id, grace_hours=1, settings=ignite)
    assert sorted(retiring) == sorted([key_id_of(first), key_id_of(second)])
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert key_owner(first, ignite)['until'] > now and key_owner(new, ignite)['until'] is None
    assert {k['key_id']: k['state'] for k in list_keys(tenant_id, ignite)} == {
        key_id_of(first): 'retiring', key_id_of(second): 'retiring', key_id_of(new): 'active'}
    assert next(t for t in list_tenants(ignite) if t['id'] == tenant_id)['api_keys'] == 3   # all three work
    assert revoke_keys(tenant_id, key_id_of(first), settings=ignite) == [key_id_of(first)]
    assert [tenant_for_key(k, ignite) for k in (first, second, new)] == [None, tenant_id, tenant_id]
    with pytest.raises(UnknownKey, match='alliedium tenants keys'): revoke_keys(tenant_id, 'kid_0123456789ab',
                                                                                settings=ignite)
    create_tenant(tenant_id + 'b', settings=ignite)
    with pytest.raises(UnknownKey): revoke_keys(tenant_id + 'b', key_id_of(second), settings=ignite)   # not theirs
    assert sorted(revoke_keys(tenant_id, every=True, settings=ignite)) == sorted([key_id_of(second), key_id_of(new)])
    assert [tenant_for_key(k, ignite) for k in (first, second, new)] == [None, None, None]
    new2, retiring = rotate_keys(tenant_id, grace_hours=0, settings=ignite)   # nothing left to retire
    assert retiring == [] and tenant_for_key(new2, ignite) == tenant_id


def test_webhook_secrets_are_derived_never_stored(ignite, tenant_id):
    from alliedium.tenants import new_webhook_secret, remove_webhook_secret, webhook_secret
    create_tenant(tenant_id, settings=ignite)
    assert webhook_secret(tenant_id, ignite) is None
    secret = new_webhook_secret(tenant_id, ignite)
    with ignite_client(ignite) as c:
        stored = [str(v) for r in c.sql('SELECT * FROM ALLIEDIUM.TENANT WHERE id = ?', query_args=[tenant_id])
                  for v in r]
    assert not any(secret in v or secret.removeprefix('whsec_') in v for v in stored)
    assert webhook_secret(tenant_id, ignite) == secret
    assert new_webhook_secret(tenant_id, ignite) != secret   # a new one replaces it
    assert remove_webhook_secret(tenant_id, ignite) and webhook_secret(tenant_id, ignite) is None


def test_tenant_key_commands(ignite, tenant_id):
    "`alliedium tenants keys|rotate|revoke|webhook-secret` as a user runs them: secrets alone on stdout."
    import json, os, subprocess, sys
    from pathlib import Path
    from alliedium.tenants import key_id_of, webhook_secret
    run = lambda *a: subprocess.run([str(Path(sys.executable).parent/'alliedium'), 'tenants', *a], text=True,
                                    capture_output=True, timeout=300, env=dict(os.environ, COLUMNS='200'))
    first = run('create', tenant_id).stdout.strip().splitlines()[-1]
    r = run('rotate', tenant_id, '--grace', '1')
    new = r.stdout.strip()
    assert r.returncode == 0 and tenant_for_key(new, ignite) == tenant_id and key_id_of(first) in r.stderr
    r = run('keys', tenant_id, '--json')
    states = {k['key_id']: k['state'] for k in json.loads(r.stdout)}
    assert states == {key_id_of(first): 'retiring', key_id_of(new): 'active'} and first not in r.stdout
    r = run('revoke', tenant_id, key_id_of(first))
    assert r.returncode == 0 and tenant_for_key(first, ignite) is None and tenant_for_key(new, ignite) == tenant_id
    r = run('revoke', tenant_id)
    assert r.returncode == 2 and '--all' in r.stderr
    r = run('revoke', tenant_id, 'kid_000000000000')
    assert r.returncode == 2 and 'alliedium tenants keys' in r.stderr and 'Traceback' not in r.stderr
    assert run('revoke', tenant_id, '--all').returncode == 0 and tenant_for_key(new, ignite) is None
    r = run('webhook-secret', tenant_id)
    assert r.returncode == 0 and r.stdout.strip() == webhook_secret(tenant_id, ignite) and 'X-Hub-Signature' in r.stderr
    assert run('webhook-secret', tenant_id, '--remove').returncode == 0 and webhook_secret(tenant_id, ignite) is None
