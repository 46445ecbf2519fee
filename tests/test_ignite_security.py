"""Ignite security on real nodes of their own (authentication, TLS, TDE on, whatever the defaults): who may connect,
what lands on disk, the migration of unencrypted tables, master-key rotation, and what a colocated job may be asked."""
import gzip, json, os, stat, subprocess, sys, uuid
from pathlib import Path

import pytest
from pyignite import Client
from pyignite.exceptions import AuthenticationError

from alliedium.config import ConfigError, Settings
from alliedium.ignite import (IgniteLoginFailed, IgniteUnavailable, LocalNode, admin_password, client_options,
                              free_port, ignite_client, start_local_node, stop_local_node)
from alliedium.jira import parse_issue
from alliedium.schema import _copy, _table_ddl, ensure_schema, tables, unencrypted_tables
from alliedium.thick import TICKET_CACHE, Gateway, current_gateway, rotate_master_key

SAMPLE = Path(__file__).resolve().parent.parent/'data'/'sample'/'Zookeeper.jsonl.gz'
PROBE = 'alliedium.thick:probe_job'
SECURE = dict(ignite_auth=True, ignite_tls=True, ignite_tde=True)


def own_node(var_dir, **kw) -> Settings:
    "Settings of a node of its own: free ports, its own var dir (secrets under it)."
    return Settings(var_dir=var_dir, ignite_hosts='', ignite_client_port=free_port(),
                    ignite_discovery_port=free_port(), ignite_communication_port=free_port(),
                    ignite_heap='512m', ignite_data_region_mb=128, thick_timeout=60, **kw)


@pytest.fixture(scope='module')
def secure(tmp_path_factory):
    "A node with authentication, TLS and TDE, its schema made."
    s = own_node(tmp_path_factory.mktemp('secure'), **SECURE)
    try:
        start_local_node(s)
        ensure_schema(s)
        yield s
    finally: stop_local_node(s)


@pytest.fixture(scope='module')
def secure_gateway(secure):
    "A gateway on the secure node (this process's only one: another is closed first)."
    if current_gateway() is not None: current_gateway().close()
    gw = Gateway(secure).start()
    try: yield gw
    finally: gw.close()


def ticket(tenant: str, summary: str, n: int = 0):
    "The `n`th real ZooKeeper issue as `tenant`'s ticket, its summary replaced."
    with gzip.open(SAMPLE, 'rt') as f:
        for _ in range(n + 1): obj = json.loads(next(f))
    obj['fields']['summary'] = summary
    return parse_issue(obj, tenant)


def files_holding(root: Path, needle: bytes) -> list[str]:
    "Every file under `root` whose bytes contain `needle`."
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file() and needle in p.read_bytes())


def test_secrets_are_generated_private_and_outside_the_config(secure):
    d = secure.secrets_path
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ('ignite-password', 'ignite-admin-password', 'store-password', 'node.p12', 'trust.p12', 'ca.pem',
                 'tde.p12'):
        assert stat.S_IMODE((d/name).stat().st_mode) == 0o600, name
    xml = LocalNode(secure).config_path.read_text()
    for name in ('ignite-password', 'ignite-admin-password', 'store-password'):
        assert (d/name).read_text().strip() not in xml  # passwords reach the JVM in its environment only
    assert 'authenticationEnabled' in xml and 'KeystoreEncryptionSpi' in xml and 'sslEnabled' in xml


def test_client_without_credentials_is_refused(secure):
    with pytest.raises(IgniteLoginFailed, match='refused the login'):
        with ignite_client(secure.model_copy(update=dict(ignite_auth=False))): pass
    with pytest.raises(IgniteLoginFailed):
        with ignite_client(secure.model_copy(update=dict(ignite_password='not-the-password'))): pass
    with ignite_client(secure) as c: assert list(c.sql('SELECT 1')) == [[1]]


def test_client_without_tls_is_refused(secure):
    with pytest.raises(IgniteUnavailable, match='no Ignite node answers'):
        with ignite_client(secure.model_copy(update=dict(ignite_tls=False)), timeout=5): pass


def test_client_that_does_not_trust_the_nodes_certificate_is_refused(secure, tmp_path):
    "A CA of someone else's (a node impersonated, or the wrong cluster): the TLS handshake fails."
    other = own_node(tmp_path, **SECURE)
    from alliedium.ignite import ensure_secrets
    ensure_secrets(other)
    assert other.ca_file.read_bytes() != secure.ca_file.read_bytes()
    with pytest.raises(IgniteUnavailable, match='no Ignite node answers'):
        with ignite_client(secure.model_copy(update=dict(ignite_ca=other.ca_file)), timeout=5): pass


def test_default_superuser_password_was_changed(secure):
    opts = {**client_options(secure), 'username': 'ignite', 'password': 'ignite'}
    c = Client(timeout=5, **opts)
    with pytest.raises(AuthenticationError): c.connect(secure.ignite_addresses())
    opts['password'] = admin_password(secure)
    c = Client(timeout=5, **opts)
    c.connect(secure.ignite_addresses())
    try: assert list(c.sql('SELECT 1')) == [[1]]
    finally: c.close()


def test_every_alliedium_table_is_encrypted(secure):
    with ignite_client(secure) as c:
        assert {'TICKET', 'MODEL', 'TENANT', 'API_KEY', 'RUN', 'SCHEMA_VERSION'} <= set(tables(c))
        assert unencrypted_tables(c) == []


def test_ingested_ticket_is_nowhere_on_disk(secure, secure_gateway):
    "Pages, WAL, checkpoints: a byte search of the node's work directory finds no ticket text (a control finds it)."
    from alliedium.ingest import ingest_tickets
    from alliedium.tenants import create_tenant
    tenant, marker, control = f'sec-{uuid.uuid4().hex[:8]}', f'SUMMARY-{uuid.uuid4().hex}', f'PLAIN-{uuid.uuid4().hex}'
    create_tenant(tenant, settings=secure)
    ingest_tickets(tenant, [ticket(tenant, marker)], settings=secure)
    with ignite_client(secure) as c:
        assert list(c.sql('SELECT summary FROM ALLIEDIUM.TICKET WHERE tenant_id = ?', query_args=[tenant])) == [[marker]]
        # the control: a table made without encryption, which the same search must find
        c.sql('CREATE TABLE IF NOT EXISTS PUBLIC.PLAIN_CONTROL (id INT PRIMARY KEY, v VARCHAR) '
              'WITH "cache_name=PLAIN_CONTROL"')
        c.sql('MERGE INTO PUBLIC.PLAIN_CONTROL (id, v) VALUES (1, ?)', query_args=[control])
    assert secure_gateway.checkpoint() == ['node0']
    work = LocalNode(secure).dir
    assert files_holding(work, control.encode()), "the control marker should be on disk in plain text"
    assert files_holding(work, marker.encode()) == []
    assert marker.encode() not in LocalNode(secure).log_path.read_bytes()
    assert any(p.name.endswith('.wal') for p in work.rglob('*')) and any((work/'db').rglob('part-*.bin'))


def test_python_job_runs_against_its_own_node_with_the_nodes_credentials(secure, secure_gateway):
    from alliedium.tenants import create_tenant
    tenant = f'job-{uuid.uuid4().hex[:8]}'
    create_tenant(tenant, settings=secure)
    r = secure_gateway.run_colocated(tenant, PROBE, timeout=120)
    assert r['node'] == 'node0' and r['result']['tickets'] == 0
    assert r['result']['ignite'] == f'{secure.ignite_host}:{LocalNode(secure).client_port}'


@pytest.mark.parametrize('env', [{'LD_PRELOAD': '/tmp/evil.so'}, {'PYTHONPATH': '/tmp'}, {'PYTHONSTARTUP': '/tmp/x'},
                                 {'ALLIEDIUM_IGNITE_HOSTS': '10.9.9.9:10800'}, {'ALLIEDIUM_IGNITE_PASSWORD': 'x'}])
def test_python_job_with_a_forbidden_environment_is_refused_by_the_node(secure, secure_gateway, env):
    "Sent straight to the gateway's facade (as any client node could), past the Python-side check."
    with pytest.raises(ConfigError, match=next(iter(env))):
        secure_gateway.submit('any', PROBE, env=env)
    job = secure_gateway._call('submitPython', TICKET_CACHE, 'any', PROBE, '{}', env, 60000)
    out = json.loads(secure_gateway._call('await', job, 60000))
    assert out['ok'] is False and out['error']['type'] == 'BadEnv' and next(iter(env)) in out['error']['message']


@pytest.mark.parametrize('entry', ['alliedium.ingest:delete_tickets', 'alliedium.thick:job_main', 'os:system'])
def test_python_job_outside_the_allow_list_is_refused_by_the_node(secure, secure_gateway, entry):
    with pytest.raises(ConfigError, match='not one a colocated job may run'):
        secure_gateway.submit('any', entry)
    job = secure_gateway._call('submitPython', TICKET_CACHE, 'any', entry, '{}', {}, 60000)
    out = json.loads(secure_gateway._call('await', job, 60000))
    assert out['ok'] is False and out['error']['type'] == 'BadEntry'


def test_python_job_allowed_environment_reaches_it(secure, secure_gateway):
    from alliedium.tenants import create_tenant
    tenant = f'env-{uuid.uuid4().hex[:8]}'
    create_tenant(tenant, settings=secure)
    r = secure_gateway.run_colocated(tenant, PROBE, timeout=120, env={'OMP_NUM_THREADS': '1'})
    assert r['result']['tenant_id'] == tenant


def test_master_key_rotation_keeps_the_data_across_a_restart(secure, secure_gateway):
    from alliedium.tenants import create_tenant
    tenant = f'rot-{uuid.uuid4().hex[:8]}'
    create_tenant(tenant, settings=secure)
    first = secure_gateway.master_key()
    r = rotate_master_key(secure, gateway=secure_gateway)
    assert r['before'] == first and r['after'] != first and r['after'].startswith('alliedium.master.')
    # the command line, as a user runs it: another new key
    env = {**os.environ, **secure.as_env()}
    out = subprocess.run([str(Path(sys.executable).parent/'alliedium'), 'ignite', 'rotate-master-key'], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"(was {r['after']})" in out.stdout
    now = secure_gateway.master_key()
    assert now not in (first, r['after'])
    secure_gateway.close()
    stop_local_node(secure)
    start_local_node(secure)
    with ignite_client(secure) as c:
        assert list(c.sql('SELECT id FROM ALLIEDIUM.TENANT WHERE id = ?', query_args=[tenant])) == [[tenant]]
    with Gateway(secure) as gw: assert gw.master_key() == now


def test_rotation_needs_tde(secure):
    with pytest.raises(ConfigError, match='TDE is off'):
        rotate_master_key(secure.model_copy(update=dict(ignite_tde=False)))


def test_migration_moves_unencrypted_tables_into_encrypted_ones(tmp_path):
    "A store made without TDE, then TDE on: every table encrypted, every row kept; an interrupted move resumes."
    plain = own_node(tmp_path, ignite_auth=False, ignite_tls=False, ignite_tde=False)
    secure = plain.model_copy(update=SECURE)
    rows = lambda c, t: sorted(map(repr, c.sql(f'SELECT * FROM ALLIEDIUM.{t}')))
    try:
        start_local_node(plain)
        ensure_schema(plain)
        from alliedium.ingest import ingest_tickets
        from alliedium.tenants import create_tenant
        create_tenant('acme', settings=plain)
        ingest_tickets('acme', [ticket('acme', f'summary {i}', i) for i in range(3)], settings=plain)
        with ignite_client(plain) as c:
            c.sql("INSERT INTO ALLIEDIUM.MODEL (tenant_id, task, version, artifact, format, active) "
                  "VALUES ('acme', 'assignee', 1, X'00ff10', 'test', true)")
            before = {t: rows(c, t) for t in tables(c)}
            assert set(unencrypted_tables(c)) == set(before)
        stop_local_node(plain)
        start_local_node(secure)
        with ignite_client(secure) as c:
            # a move interrupted after its first half: MODEL's rows wait in MODEL__ENC, MODEL is gone
            for q in _table_ddl('MODEL', 0, '__ENC'): c.sql(q)
            _copy(c, 'MODEL', 'MODEL__ENC')
            c.sql('DROP TABLE ALLIEDIUM.MODEL')
        r = ensure_schema(secure)
        assert set(r['encrypted']) == set(before)
        with ignite_client(secure) as c:
            assert unencrypted_tables(c) == [] and set(tables(c)) == set(before)
            assert {t: rows(c, t) for t in tables(c)} == before
            assert before['TICKET'] and before['MODEL']
        assert ensure_schema(secure)['encrypted'] == []
    finally:
        stop_local_node(secure)


def test_run_records_and_executed_retrain_notebooks_hold_no_ticket_text(ignite):
    "A real retrain (papermill) of a real tenant: neither its executed notebook nor its RUN row shows a ticket."
    import itertools
    from alliedium.ingest import ingest_tickets
    from alliedium.jira import Ticket, jira_file, read_issues
    from alliedium.retrain import retrain
    from alliedium.runs import get_run
    from alliedium.tenants import create_tenant
    tenant = f'rec-{uuid.uuid4().hex[:8]}'
    create_tenant(tenant, settings=ignite)
    tickets = [t for t in itertools.islice(read_issues(jira_file('Storm'), tenant), 260) if isinstance(t, Ticket)]
    ingest_tickets(tenant, tickets, ignite)
    [r] = retrain([tenant], jobs=1, settings=ignite, progress=False)
    assert r.notebook and Path(r.notebook).exists()
    texts = {'notebook': Path(r.notebook).read_text(), 'run': json.dumps(get_run(r.run_id, ignite), default=str)}
    from alliedium.retrain import notebook_result
    assert notebook_result(r.notebook)['tickets'] == len(tickets)  # it ran on them
    for where, text in texts.items():
        shown = [t.issue_key for t in tickets if f'"{t.issue_key}"' in text or f"'{t.issue_key}'" in text
                 or f' {t.issue_key} ' in text or f'>{t.issue_key}<' in text]
        shown += [t.summary for t in tickets if len(t.summary) > 20 and t.summary in text]
        assert shown == [], f"the {where} shows ticket text: {shown[:3]}"


def test_start_beside_a_node_with_other_security_settings_says_restart(secure):
    from alliedium.ignite import IgniteStartFailed
    with pytest.raises(IgniteStartFailed, match=r'TLS off wanted.*alliedium ignite stop'):
        start_local_node(secure.model_copy(update=dict(ignite_tls=False)))
