"The ALLIEDIUM schema on a real node: idempotent creation, affinity keys, transactional caches, version record."
from alliedium.ignite import ignite_client
from alliedium.schema import SCHEMA_VERSION, ensure_schema, schema_version, tables


def test_schema_is_idempotent(ignite):
    with ignite_client(ignite) as c:
        assert ensure_schema(ignite, c) == dict(before=SCHEMA_VERSION, after=SCHEMA_VERSION, encrypted=[])
        assert schema_version(c) == SCHEMA_VERSION
        assert {'TENANT', 'API_KEY', 'TICKET', 'MODEL', 'RUN', 'SCHEMA_VERSION'} <= set(tables(c))


def test_tenant_tables_are_colocated_by_tenant(ignite):
    with ignite_client(ignite) as c:
        rows = dict(c.sql("SELECT TABLE_NAME, AFFINITY_KEY_COLUMN FROM SYS.TABLES WHERE SCHEMA_NAME = 'ALLIEDIUM'"))
    assert rows['TICKET'] == 'TENANT_ID' and rows['MODEL'] == 'TENANT_ID'


def test_tables_are_transactional_caches(ignite):
    with ignite_client(ignite) as c:
        modes = dict(c.sql("SELECT CACHE_NAME, ATOMICITY_MODE FROM SYS.CACHES WHERE CACHE_NAME LIKE 'ALLIEDIUM_%'"))
    assert set(modes) >= {'ALLIEDIUM_TICKET', 'ALLIEDIUM_MODEL', 'ALLIEDIUM_TENANT', 'ALLIEDIUM_RUN',
                          'ALLIEDIUM_API_KEY'}
    assert set(modes.values()) == {'TRANSACTIONAL'}


def test_ticket_primary_key_is_tenant_and_issue_key(ignite):
    with ignite_client(ignite) as c:
        c.sql("MERGE INTO ALLIEDIUM.TICKET (tenant_id, issue_key, summary) "
              "VALUES ('t1', 'ZK-1', 'a'), ('t2', 'ZK-1', 'b')")
        c.sql("MERGE INTO ALLIEDIUM.TICKET (tenant_id, issue_key, summary) VALUES ('t1', 'ZK-1', 'c')")
        rows = list(c.sql("SELECT tenant_id, summary FROM ALLIEDIUM.TICKET WHERE issue_key = 'ZK-1' "
                          "ORDER BY tenant_id"))
        c.sql("DELETE FROM ALLIEDIUM.TICKET WHERE tenant_id IN ('t1', 't2')")
    assert rows == [['t1', 'c'], ['t2', 'b']]
