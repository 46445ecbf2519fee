"""A replica's loaded tenants (`alliedium.serving.api.SlotCache`): bounded by their models' bytes and by count, least
recently used out first, one load per tenant however many requests wait for it, and the poller's rounds limited to
the tenants asked for lately. Real models: one tenant trained on ZooKeeper tickets, two more holding signed copies
of its models (`alliedium.bench.tenants.copy_active`, as `bench tenants --copy-models` makes them)."""
import asyncio, itertools, time, uuid

import pytest

from alliedium.ignite import ignite_client
from alliedium.ingest import ingest_tickets
from alliedium.jira import read_issues, sample_dir
from alliedium.serving.api import SlotCache, TenantSlot, recently_used
from alliedium.tenants import create_tenant
from alliedium.training import train_tenant


@pytest.fixture(scope='module')
def tenants(ignite):
    "Three tenants with the same models (one trained, two copies)."
    from alliedium.bench.tenants import copy_active
    first = f'slot-{uuid.uuid4().hex[:8]}'
    create_tenant(first, settings=ignite)
    ingest_tickets(first, itertools.islice(read_issues(sample_dir()/'Zookeeper.jsonl.gz', first), 400), settings=ignite)
    train_tenant(first, tasks=['priority', 'components'], settings=ignite)
    names = [first] + [f'{first}-{i}' for i in (1, 2)]
    with ignite_client(ignite) as c:
        for t in names[1:]:
            create_tenant(t, settings=ignite, client=c)
            copy_active(first, t, ignite, c, {})
    return names


def cache_of(settings, **bounds) -> SlotCache: return SlotCache(settings.model_copy(update=bounds))


def test_a_slot_counts_the_bytes_of_its_models(ignite, tenants):
    slot = TenantSlot(tenants[0], ignite)
    assert set(slot.sizes) == set(slot.versions) == {'priority', 'components'}
    assert all(n > 10_000 for n in slot.sizes.values()) and slot.nbytes == sum(slot.sizes.values())
    again = TenantSlot(tenants[0], ignite)  # from the node's file cache now: the mapped files' sizes
    assert again.sizes == slot.sizes


def test_slots_are_evicted_least_recently_used_first_by_bytes(ignite, tenants):
    a, b, c = tenants
    size = TenantSlot(a, ignite).nbytes
    cache = cache_of(ignite, serve_models_memory_mb=2.5 * size / 2**20, serve_models_per_replica=100)

    async def run():
        for t in (a, b, c): await cache.get(t)
        held1 = list(cache.slots)
        await cache.get(b)  # b is now the most recently used: c goes next
        await cache.get(a)
        return held1, list(cache.slots)
    held1, held2 = asyncio.run(run())
    assert held1 == [b, c] and held2 == [b, a]
    assert cache.nbytes <= 2.5 * size


def test_the_count_bounds_too_and_the_newest_stays_whatever_its_size(ignite, tenants):
    a, b, _ = tenants
    by_count = cache_of(ignite, serve_models_per_replica=1, serve_models_memory_mb=0)
    tiny = cache_of(ignite, serve_models_memory_mb=0.001)

    async def run(cache):
        for t in (a, b): await cache.get(t)
        return list(cache.slots)
    assert asyncio.run(run(by_count)) == [b]
    assert asyncio.run(run(tiny)) == [b]


def test_concurrent_requests_for_a_tenant_load_it_once(ignite, tenants):
    cache = cache_of(ignite)

    async def run():
        return await asyncio.gather(*(cache.get(tenants[1]) for _ in range(6)))
    slots = asyncio.run(run())
    assert len({id(s) for s in slots}) == 1 and list(cache.slots) == [tenants[1]] and not cache._loading


def test_a_stale_slot_is_checked_again_before_it_answers(ignite, tenants):
    cache = cache_of(ignite)
    slot = asyncio.run(cache.get(tenants[0]))
    slot.checked = float('-inf')
    t0 = time.monotonic()
    assert asyncio.run(cache.get(tenants[0])) is slot and slot.checked >= t0


def test_the_poller_asks_only_for_tenants_used_lately(ignite, tenants):
    cache = cache_of(ignite)

    async def run():
        for t in tenants: await cache.get(t)
    asyncio.run(run())
    cache.slots[tenants[0]].used -= 100
    assert set(recently_used(cache.slots, 10)) == set(tenants[1:])


def test_in_the_background_a_stale_slot_answers_at_once_and_is_checked_beside(ignite, tenants):
    "As replicas hold them: a held tenant not asked for lately answers with what it holds while it is checked."
    cache = SlotCache(ignite, background=True)

    async def run():
        slot = await cache.get(tenants[0])
        slot.checked = float('-inf')
        t0 = time.monotonic()
        again = await cache.get(tenants[0])
        pending = dict(cache._checking)  # (its check is under way, not awaited by the request)
        await asyncio.gather(*pending.values())
        await asyncio.sleep(0)
        return slot, again, pending, t0
    slot, again, pending, t0 = asyncio.run(run())
    assert again is slot and list(pending) == [tenants[0]] and slot.checked >= t0 and not cache._checking
