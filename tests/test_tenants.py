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
