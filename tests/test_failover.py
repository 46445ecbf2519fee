"""Failover on a real two-node local cluster (loopback, own ports and work dirs, TICKET with one backup):
a tenant's job follows its data, survives the SIGKILL of the node running it, and every ticket stays readable."""
import os, signal, subprocess, sys, time
from pathlib import Path

import pytest

from alliedium.ignite import LocalNode, _alive, cluster_status, ignite_client, node_pid
from alliedium.thick import JobFailed
from fixtures_cluster import insert_tickets, new_tenant, real_tickets, wait_for

pytestmark = pytest.mark.slow
PROBE = 'alliedium.thick:probe_job'


def test_two_nodes_start_as_one_baseline(two_node_cluster):
    s, r = two_node_cluster
    st = cluster_status(s)
    assert (st['state'], st['servers']) == ('ACTIVE', 2) and len(r.pids) == 2
    with ignite_client(s) as c:
        baseline = sorted(c.sql('SELECT CONSISTENT_ID, ONLINE FROM SYS.BASELINE_NODES'))
        assert baseline == [['node0', True], ['node1', True]]
        assert list(c.sql("SELECT BACKUPS FROM SYS.CACHES WHERE CACHE_NAME = 'ALLIEDIUM_TICKET'")) == [[1]]
    assert LocalNode(s, 0).dir != LocalNode(s, 1).dir and LocalNode(s, 1).client_port == s.ignite_client_port + 1


def test_cli_sees_the_local_cluster(two_node_cluster):
    "`alliedium ignite start --nodes 2` as a user runs it finds both nodes running; `status` lists both."
    s, r = two_node_cluster
    env = {**os.environ, **{f'ALLIEDIUM_{k.upper()}': str(v) for k, v in s.model_dump().items()
                            if (k.startswith('ignite_') or k == 'var_dir') and v is not None}}
    run = lambda *a: subprocess.run([str(Path(sys.executable).parent/'alliedium'), *a], capture_output=True, text=True,
                                    timeout=300, env=env)
    out = run('ignite', 'start', '--nodes', '2')
    assert out.returncode == 0, out.stderr
    assert f'Ignite cluster of 2 nodes already running (pid {r.pids[0]}, {r.pids[1]})' in out.stdout
    out = run('ignite', 'status')
    assert 'cluster ACTIVE, 2 server(s)' in out.stdout and f'local node1: pid {r.pids[1]}' in out.stdout


def test_job_fails_over_when_its_node_is_killed(two_node_cluster, cluster_gateway, tmp_path):
    s, _, gw = *two_node_cluster, cluster_gateway
    projects = ['Zookeeper', 'Storm', 'ActiveMQ', 'Hive']
    tenants = {new_tenant(s, 'failover'): p for p in projects}
    counts = {t: insert_tickets(s, t, real_tickets(p, 60)) for t, p in tenants.items()}
    tenant, marker = next(iter(tenants)), tmp_path/'starts'
    # the tenant's partition, computed for a plain tenant id, is where its real (binary) ticket keys live
    for t in tenants:
        owner = gw.tenant_node(t)
        assert {gw.ticket_key_node(t, k) for k in ('ZOOKEEPER-1', 'STORM-2', 'X-3')} == {owner}
    victim = gw.tenant_node(tenant)
    survivor = ({'node0', 'node1'} - {victim}).pop()
    job = gw.submit(tenant, PROBE, timeout=300, sleep=6, marker=str(marker))
    assert wait_for(lambda: marker.exists() and marker.read_text(), 120), "the job never started"
    first_pid = int(marker.read_text().split()[0])
    os.kill(node_pid(LocalNode(s, int(victim[-1]))), signal.SIGKILL)
    killed = time.time()
    r = gw.wait(job, timeout=300)
    done = time.time()
    starts = marker.read_text().splitlines()
    print(f"failover: kill -> job restarted on {survivor} {float(starts[-1].split()[1]) - killed:.1f}s, "
          f"kill -> result {done - killed:.1f}s")
    assert r['node'] == survivor and r['result']['tickets'] == counts[tenant]
    assert len(starts) == 2, starts
    assert wait_for(lambda: not _alive(first_pid), 30), "the killed node's job process survived it"
    assert gw.tenant_node(tenant) == survivor
    assert gw.noop(tenant)['node'] == survivor
    with ignite_client(s) as c:  # reaches the survivor even when node0 is the one killed
        for t, n in counts.items():
            rows = list(c.sql('SELECT issue_key, summary FROM ALLIEDIUM.TICKET WHERE tenant_id = ?', query_args=[t]))
            assert len(rows) == n and all(r[1] for r in rows)


def test_a_job_with_no_server_left_fails_clearly(two_node_cluster, cluster_gateway, tmp_path):
    s, _, gw = *two_node_cluster, cluster_gateway
    alive = [n for n in (LocalNode(s, 0), LocalNode(s, 1)) if node_pid(n)]
    assert len(alive) == 1, "runs after the failover test, with one node left"
    tenant, marker = new_tenant(s, 'lastnode'), tmp_path/'starts'
    job = gw.submit(tenant, PROBE, timeout=300, sleep=300, marker=str(marker))
    assert wait_for(marker.exists, 120)
    os.kill(node_pid(alive[0]), signal.SIGKILL)
    with pytest.raises(JobFailed, match='ClusterUnavailable|JobLost|no server'):
        gw.wait(job, timeout=300)

