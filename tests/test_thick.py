"""The thick client on the session's node: a real gateway JVM (Ignite client node), jobs colocated with a tenant's
data running real Python on the server, messaging between two processes, and every bad input a caller can cause."""
import json, os, select, signal, subprocess, sys

import pytest

from alliedium.config import ConfigError
from alliedium.ignite import JavaNotFound, LocalNode, _alive, free_port
from alliedium.tenants import UnknownTenant
from alliedium.thick import (Gateway, GatewayAlreadyRunning, GatewayDied, GatewayJarsMissing, GatewayStartFailed,
                             JobFailed, JobTimeout, current_gateway, publish_model_promoted,
                             run_colocated_retrain, thick_client)
from fixtures_cluster import insert_tickets, new_tenant, real_tickets, wait_for

PROBE = 'alliedium.thick:probe_job'


def test_gateway_joins_the_cluster_as_a_client(thick_gateway, ignite):
    top = thick_gateway.topology()
    assert [n['consistent_id'] for n in top['servers']] == ['node0']
    assert top['clients'] >= 1 and top['active'] and top['version'].startswith('2.15.')
    assert thick_gateway.start_seconds > 0 and current_gateway() is thick_gateway
    from alliedium.registry import on_promote
    assert publish_model_promoted in on_promote  # promotions made in this process are announced


def test_noop_job_runs_on_the_tenants_node(thick_gateway, ignite):
    tenant = new_tenant(ignite)
    r = thick_gateway.noop(tenant)
    assert r == dict(node=thick_gateway.tenant_node(tenant), result={'noop': True})


def test_python_job_counts_the_tenants_tickets_through_its_own_node(thick_gateway, ignite):
    tenant = new_tenant(ignite)
    n = insert_tickets(ignite, tenant, real_tickets('Zookeeper', 25))
    r = thick_gateway.run_colocated(tenant, PROBE, timeout=120)
    assert r['node'] == 'node0' and r['result']['tickets'] == n
    assert r['result']['ignite'] == f'{ignite.ignite_host}:{LocalNode(ignite).client_port}'  # the node's own thin port
    assert r['result']['pid'] != os.getpid()


def test_unknown_tenant_is_the_tenants_error(thick_gateway):
    with pytest.raises(UnknownTenant, match='alliedium tenants create no-such-tenant'):
        thick_gateway.run_colocated('no-such-tenant', PROBE, timeout=120)


def test_job_raising_in_python_comes_back_with_its_traceback(thick_gateway, ignite):
    tenant = new_tenant(ignite)
    with pytest.raises(JobFailed, match='RuntimeError on node node0: model exploded') as e:
        thick_gateway.run_colocated(tenant, PROBE, timeout=120, fail='model exploded')
    assert 'probe_job' in e.value.remote_traceback and e.value.node == 'node0'


def test_job_that_times_out_is_killed_on_its_node(thick_gateway, ignite, tmp_path):
    tenant, marker = new_tenant(ignite), tmp_path/'started'
    with pytest.raises(JobTimeout, match='ran out of time on node node0'):
        thick_gateway.run_colocated(tenant, PROBE, timeout=4, sleep=600, marker=str(marker))
    pid = int(marker.read_text().split()[0])
    assert wait_for(lambda: not _alive(pid), 30), "the timed-out job's Python process still runs"
    assert thick_gateway.noop(tenant)['node'] == 'node0'  # the gateway is fine afterwards


def test_entry_outside_the_package_is_refused(thick_gateway, ignite):
    with pytest.raises(ConfigError, match='not one a colocated job may run'):
        thick_gateway.submit(new_tenant(ignite), 'os:system', cmd='true')
    with pytest.raises(ConfigError, match='not one a colocated job may run'):  # in the package, not allowed
        thick_gateway.submit(new_tenant(ignite), 'alliedium.ingest:delete_tickets')


def test_gateway_started_twice_is_refused(thick_gateway, ignite):
    with pytest.raises(GatewayAlreadyRunning, match='already runs in this process'): Gateway(ignite).start()
    with pytest.raises(GatewayAlreadyRunning): thick_gateway.start()
    assert thick_gateway.ping()


def test_colocated_retrain_runs_the_configured_entry_and_records_its_run(thick_gateway, ignite):
    from alliedium.runs import get_run
    tenant = new_tenant(ignite)
    insert_tickets(ignite, tenant, real_tickets('Storm', 10))
    s = ignite.model_copy(update=dict(retrain_entry=PROBE))
    r = run_colocated_retrain(tenant, settings=s, gateway=thick_gateway, timeout=120)
    assert r['node'] == 'node0' and r['result']['tickets'] == 10
    run = get_run(r['run_id'], ignite)
    assert (run['tenant_id'], run['kind'], run['status']) == (tenant, 'retrain', 'succeeded')
    assert run['metrics']['node'] == 'node0' and run['finished_at'] is not None


def test_failed_colocated_retrain_leaves_no_running_row(thick_gateway, ignite):
    from alliedium.runs import list_runs
    s = ignite.model_copy(update=dict(retrain_entry=PROBE))
    with pytest.raises(UnknownTenant):
        run_colocated_retrain('no-such-tenant-rt', settings=s, gateway=thick_gateway, timeout=120)
    tenant = new_tenant(ignite)
    with pytest.raises(JobTimeout):
        run_colocated_retrain(tenant, settings=s, gateway=thick_gateway, timeout=3, sleep=60)
    for t in ('no-such-tenant-rt', tenant):
        runs = list_runs(t, ignite)
        assert [r['status'] for r in runs] == ['failed'] and runs[0]['finished_at'] is not None


@pytest.mark.slow
def test_model_promoted_reaches_a_subscriber_in_another_process(thick_gateway, ignite):
    "A second process (as serving would be) subscribes through its own gateway; this one publishes."
    code = ("import json, sys\nfrom alliedium.thick import thick_client\n"
            "with thick_client() as gw:\n"
            "    gw.on_model_promoted(lambda t, task, v: print(json.dumps([t, task, v]), flush=True))\n"
            "    print('READY', flush=True)\n"
            "    sys.stdin.read()\n")
    sub = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        def line(seconds):
            if select.select([sub.stdout], [], [], seconds)[0]: return sub.stdout.readline().strip()
        assert line(120) == 'READY'
        assert publish_model_promoted('acme', 'assignee', 7)  # through this process's gateway
        assert json.loads(line(60)) == ['acme', 'assignee', 7]
        thick_gateway.publish_model_promoted('acme', 'priority', 8)
        assert json.loads(line(60)) == ['acme', 'priority', 8]
    finally:
        sub.stdin.close(); sub.wait(60)
    assert sub.returncode == 0


def test_subscriber_in_the_same_process_gets_its_own_messages(thick_gateway):
    got = []
    with thick_gateway.on_model_promoted(lambda *m: got.append(m)):
        thick_gateway.publish_model_promoted('same', 'labels', 2)
        assert wait_for(lambda: got, 30) == [('same', 'labels', 2)]


@pytest.mark.slow
def test_gateway_killed_mid_call_is_a_clear_error_and_its_job_is_stopped(thick_gateway, ignite, tmp_path):
    tenant, marker = new_tenant(ignite), tmp_path/'started'
    job = thick_gateway.submit(tenant, PROBE, timeout=600, sleep=600, marker=str(marker))
    assert wait_for(marker.exists, 60)
    os.kill(thick_gateway.proc.pid, signal.SIGKILL)
    with pytest.raises(GatewayDied, match='died with exit code'):
        thick_gateway.wait(job, timeout=600)
    assert current_gateway() is None and not thick_gateway.alive
    with pytest.raises(GatewayDied, match='closed'): thick_gateway.ping()
    pid = int(marker.read_text().split()[0])  # the server notices its caller left and kills the job's process
    assert wait_for(lambda: not _alive(pid), 60), "the orphaned job's Python process still runs"


def test_missing_jars_are_reported(ignite, tmp_path):
    with pytest.raises(GatewayJarsMissing, match='make setup'):
        Gateway(ignite.model_copy(update=dict(ignite_libs=tmp_path))).start()


def test_missing_java_is_reported(ignite):
    with pytest.raises(JavaNotFound, match='install JDK 17'):
        Gateway(ignite.model_copy(update=dict(java='/nonexistent/java'))).start()


@pytest.mark.slow
def test_no_server_to_join_is_reported(ignite, thick_gateway):
    thick_gateway.close()  # one gateway per process: this test needs the slot
    s = ignite.model_copy(update=dict(ignite_discovery_hosts=f'127.0.0.1:{free_port()}', thick_start_timeout=3))
    with pytest.raises(GatewayStartFailed, match='did not join|exited with code'):
        with thick_client(s): pass
    assert current_gateway() is None


@pytest.mark.slow
def test_colocated_retrain_trains_on_the_node_and_announces_promotions(thick_gateway, ignite):
    "The real entry (training:train_tenant) on real tickets: models promoted, one message per promotion."
    from alliedium.ingest import ingest_tickets
    from alliedium.runs import get_run
    from alliedium.training import NotEnoughHistory
    tenant = new_tenant(ignite, 'retrain')
    tickets = [t.model_copy(update=dict(tenant_id=tenant)) for t in real_tickets('Zookeeper', 250)]
    ingest_tickets(tenant, tickets, ignite)
    got = []
    with thick_gateway.on_model_promoted(lambda t, task, v: got.append((t, task, v))):
        r = run_colocated_retrain(tenant, settings=ignite, gateway=thick_gateway, timeout=900, tasks=['priority'])
        promoted = {(tenant, task, res['version']) for task, res in r['result'].items() if res.get('promoted')}
        assert promoted, r['result']  # a first model is always promoted
        assert wait_for(lambda: set(got) >= promoted, 60), (got, promoted)
    assert r['node'] == 'node0' and get_run(r['run_id'], ignite)['status'] == 'succeeded'
    small = new_tenant(ignite, 'retrain-small')
    ingest_tickets(small, [t.model_copy(update=dict(tenant_id=small)) for t in real_tickets('Storm', 5)], ignite)
    with pytest.raises(NotEnoughHistory, match='ALLIEDIUM_TRAIN_MIN_TICKETS'):
        run_colocated_retrain(small, settings=ignite, gateway=thick_gateway, timeout=900)
