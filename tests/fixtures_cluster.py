"Fixtures of the thick client and of multi-node local clusters: real JVMs, real Jira tickets, tenants of their own."
import itertools, time, uuid
from pathlib import Path

import pytest

from alliedium.config import Settings
from alliedium.ignite import free_port, ignite_client, port_free, start_local_node, stop_local_node
from alliedium.jira import Ticket, read_issues
from alliedium.schema import ensure_schema
from alliedium.tenants import create_tenant
from alliedium.thick import Gateway, current_gateway

JIRA = Path(__file__).resolve().parent.parent.parent/'shared'/'data'/'jira'/'apache'


def consecutive_free_ports(n: int, host: str = '127.0.0.1') -> int:
    "A port p such that p .. p+n-1 are free (node i of a local cluster uses the configured port + i)."
    while True:
        p = free_port(host)
        if p + n < 65536 and all(port_free(host, p + i) for i in range(n)): return p


def cluster_settings(var_dir, nodes: int = 2, **kw) -> Settings:
    "Settings of a local cluster of its own: `nodes` consecutive free ports of each kind, one backup."
    return Settings(var_dir=var_dir, ignite_hosts='', ignite_client_port=consecutive_free_ports(nodes),
                    ignite_discovery_port=consecutive_free_ports(nodes),
                    ignite_communication_port=consecutive_free_ports(nodes),
                    ignite_heap='512m', ignite_data_region_mb=128, ignite_backups=1, **kw)


def new_tenant(settings: Settings, prefix: str = 'thick') -> str:
    "A tenant of the test's own."
    tenant = f'{prefix}-{uuid.uuid4().hex[:10]}'
    create_tenant(tenant, settings=settings)
    return tenant


def real_tickets(project: str, n: int) -> list[Ticket]:
    "The first `n` tickets of a real Apache Jira project."
    return list(itertools.islice((t for t in read_issues(JIRA/f'{project}.jsonl.gz', 'x') if isinstance(t, Ticket)), n))


def insert_tickets(settings: Settings, tenant: str, tickets: list[Ticket]) -> int:
    "Write `tickets` as `tenant`'s rows of TICKET (plain SQL: this area tests placement, not ingestion)."
    with ignite_client(settings) as c:
        for t in tickets:
            c.sql('MERGE INTO ALLIEDIUM.TICKET (tenant_id, issue_key, created_at, updated_at, summary, description, '
                  'issue_type, reporter, assignee, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                  query_args=[tenant, t.issue_key, t.created_at, t.updated_at, t.summary, t.description[:2000],
                              t.issue_type, t.reporter, t.assignee, t.priority])
    return len(tickets)


_shared = {}


@pytest.fixture
def thick_gateway(ignite):
    "A gateway on the session node, shared by the tests that leave it alive (restarted if a test killed it)."
    gw = _shared.get('gw')
    if gw is None or not gw.alive or current_gateway() is not gw:
        if gw is not None: gw.close()
        if current_gateway() is not None: current_gateway().close()
        gw = _shared['gw'] = Gateway(ignite).start()
    yield gw


@pytest.fixture(scope='session', autouse=True)
def close_shared_gateway():
    yield
    if _shared.get('gw') is not None: _shared['gw'].close()


def wait_for(cond, seconds=60.0, step=0.1):
    "`cond()`'s first truthy value within `seconds` (polled every `step`), else its last value."
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if (v := cond()): return v
        time.sleep(step)
    return cond()


def local_cluster(folder, nodes: int, **overrides):
    "Settings and start result of `nodes` local server nodes under `folder` with the schema; stopped afterwards."
    s = cluster_settings(folder, nodes=nodes, **overrides)
    try:
        r = start_local_node(s, nodes=nodes)
        ensure_schema(s)
        yield s, r
    finally:
        stop_local_node(s)


@pytest.fixture(scope='module')
def two_node_cluster(tmp_path_factory):
    "A local cluster of two server nodes on loopback (own ports and work dirs), TICKET with one backup."
    yield from local_cluster(tmp_path_factory.mktemp('cluster'), 2, thick_timeout=6)


@pytest.fixture(scope='module')
def cluster_gateway(two_node_cluster):
    "A gateway on the two-node cluster (this process's only one: a gateway on the session node is closed first)."
    if current_gateway() is not None: current_gateway().close()
    gw = Gateway(two_node_cluster[0]).start()
    try: yield gw
    finally: gw.close()


@pytest.fixture(scope='module')
def three_node_cluster(request, tmp_path_factory):
    """A local cluster of three server nodes on loopback (own ports and work dirs, authentication and TLS on), tables
    with one backup; TDE on, or off where a test parametrizes this fixture indirectly with `False` (`request.param`).
    Each parameter is a cluster of its own in a folder of its own, the previous one stopped before the next starts."""
    tde = getattr(request, 'param', True)
    yield from local_cluster(tmp_path_factory.mktemp('cluster3' if tde else 'cluster3-notde'), 3, ignite_tde=tde)
