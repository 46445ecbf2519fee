"""Ignite nodes SIGKILLed under load (real JVMs on loopback, security on: authentication, TLS, TDE; real Jira tickets):
a lone node during a bulk ingest and during a webhook burst through the HTTP API, and one node of a three-node
cluster (backups 1) during a bulk ingest and a triage load, with TDE on (`make test`; xfail on a known Ignite bug)
and off (`make bench`). Acknowledged (a committed batch, a 200) against stored is counted after every kill and printed
(`pytest -s`), as are the seconds until triage answers again and the rebalance."""
import json, gzip, itertools, os, signal, subprocess, sys, threading, time, uuid

import pytest
from fastapi.testclient import TestClient
from pyignite import Client

from alliedium.config import Settings
from alliedium.ignite import (LocalNode, _alive, client_addresses, client_options, free_port, ignite_client, node_pid,
                              start_local_node, stop_local_node)
from alliedium.jira import Deletion, Ticket, read_issues
from alliedium.schema import ensure_schema, unencrypted_tables
from alliedium.tenants import create_tenant
from fixtures_cluster import JIRA, wait_for

pytestmark = pytest.mark.slow

# the ingest a user runs, in a process of its own: each committed batch's issue keys on a line as it commits
INGEST = """import json, sys
from alliedium.ingest import ingest_files
tenant, batch, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
said = lambda keys: print(json.dumps(keys), flush=True)
print(json.dumps({'summary': ingest_files(tenant, files, batch_size=batch, committed=said).counts()}), flush=True)
"""


class Ingest:
    "A bulk ingest in a subprocess; `acked` holds the keys of the batches it said were committed."
    def __init__(self, s: Settings, tenant: str, files: list, batch_size: int = 100, **env):
        env = {**os.environ, **s.as_env(), **{f'ALLIEDIUM_{k.upper()}': str(v) for k, v in env.items()}}
        self.proc = subprocess.Popen([sys.executable, '-c', INGEST, tenant, str(batch_size), *map(str, files)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.acked, self.summary, self.err = set(), None, ''
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            m = json.loads(line)
            if isinstance(m, list): self.acked.update(m)
            else: self.summary = m['summary']

    def wait(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout)
        self.reader.join(10)
        self.err = self.proc.stderr.read()
        return rc


def newest_versions(files, tenant) -> dict:
    "Issue key -> the newest `updated_at` (epoch ms) in `files`: what a complete ingest stores."
    out = {}
    for f in files:
        for it in read_issues(f, tenant):
            if isinstance(it, (Ticket, Deletion)):
                out[it.issue_key] = max(out.get(it.issue_key, 0), int(it.updated_at.timestamp() * 1000))
    return out


def stored(s: Settings, tenant: str) -> dict:
    "Issue key -> stored `updated_at` (epoch ms) of the tenant's TICKET rows; a duplicate row fails."
    with ignite_client(s) as c:
        rows = list(c.sql("SELECT issue_key, DATEDIFF('MS', TIMESTAMP '1970-01-01 00:00:00', updated_at) "
                          "FROM ALLIEDIUM.TICKET WHERE tenant_id = ?", query_args=[tenant], page_size=4096))
    assert len(rows) == len({k for k, _ in rows}), "a ticket stored twice"
    return dict(rows)


def sigkill(s: Settings, index: int = 0) -> float:
    "SIGKILL node `index`'s JVM; the time it died."
    pid = node_pid(LocalNode(s, index))
    assert pid, f"node{index} does not run"
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not _alive(pid), 30)
    return time.monotonic()


def raw_issues(project: str, n: int) -> list[dict]:
    "The first `n` issues of a real Apache Jira project as its REST API returned them."
    with gzip.open(JIRA/f'{project}.jsonl.gz', 'rt') as f: return [json.loads(line) for line in itertools.islice(f, n)]


@pytest.fixture(scope='class')
def lone_node(tmp_path_factory):
    """One node of these tests' own (free ports, own work dir, security on as by default), small heap and region;
    stopped after its class, before the three-node cluster starts."""
    s = Settings(var_dir=tmp_path_factory.mktemp('lone'), ignite_hosts='', ignite_client_port=free_port(),
                 ignite_discovery_port=free_port(), ignite_communication_port=free_port(), ignite_heap='512m',
                 ignite_data_region_mb=128, ignite_backups=0)
    assert s.ignite_auth and s.ignite_tls and s.ignite_tde
    try:
        start_local_node(s)
        ensure_schema(s)
        yield s
    finally:
        stop_local_node(s)


def tenant_of(s: Settings, prefix: str) -> tuple[str, str]:
    t = f'{prefix}-{uuid.uuid4().hex[:8]}'
    return t, create_tenant(t, settings=s)


class TestLoneNode:
    "A lone node SIGKILLed under a bulk ingest, then under a webhook burst, and restarted on its work dir."

    def test_sigkill_of_the_node_during_a_bulk_ingest(self, lone_node):
        "Every batch the ingest said was committed survives the node's SIGKILL; a re-run stores exactly the rest."
        s = lone_node
        t, _ = tenant_of(s, 'nodekill')
        files = [JIRA/'YARN.jsonl.gz']
        want = newest_versions(files, t)
        ing = Ingest(s, t, files, batch_size=100, ignite_timeout=3)  # gives up 3 s after the node went away
        assert wait_for(lambda: len(ing.acked) >= 300 or ing.proc.poll() is not None, 300)
        assert ing.proc.poll() is None, f"the ingest ended before the kill: {ing.wait()} {ing.err[-500:]}"
        sigkill(s)
        rc = ing.wait(120)
        acked = set(ing.acked)
        t0 = time.monotonic()
        start_local_node(s)  # the same work dir: the node recovers from its WAL
        restart = time.monotonic() - t0
        kept = stored(s, t)
        print(f"\nlone node SIGKILLed during a bulk ingest of {len(want)} YARN tickets: acknowledged {len(acked)}, "
              f"stored after the restart {len(kept)} (restart {restart:.1f}s)")
        assert rc != 0 and 'IgniteUnavailable' in ing.err, (rc, ing.err[-800:])
        assert acked <= kept.keys() and 0 < len(kept) < len(want)
        assert all(want[k] == ms for k, ms in kept.items())
        again = Ingest(s, t, files, batch_size=500)
        assert again.wait(300) == 0, again.err[-800:]
        print(f"re-run: {again.summary}")
        assert (again.summary['inserted'], again.summary['unchanged']) == (len(want) - len(kept), len(kept))
        assert stored(s, t) == want  # every ticket once, at its newest version

    def test_sigkill_of_the_node_during_a_webhook_burst(self, lone_node):
        "Every webhook answered 200 is stored after the node's SIGKILL and restart; while it is down, 503s, never a 500."
        from alliedium.serving.api import LocalBackend, make_api
        s = lone_node.model_copy(update=dict(ignite_timeout=3))
        t, key = tenant_of(s, 'hookkill')
        events = [dict(webhookEvent='jira:issue_created', issue=i) for i in raw_issues('Storm', 120)]
        http = TestClient(make_api(LocalBackend(s)), raise_server_exceptions=False)
        answers, acked, done = [], set(), threading.Event()

        def burst():  # like Jira: an event not answered 200 is delivered again
            i = 0
            while i < len(events) and not done.is_set():
                t1 = time.monotonic()
                r = http.post(f'/v1/tenants/{t}/webhooks/jira', json=events[i],
                              headers={'Authorization': f'Bearer {key}'})
                answers.append((time.monotonic(), r.status_code, r.json(), time.monotonic() - t1))
                if r.status_code == 200: acked.add(events[i]['issue']['key']); i += 1
                else: time.sleep(0.1)
        th = threading.Thread(target=burst, daemon=True)
        th.start()
        try:
            assert wait_for(lambda: len(acked) >= 30 or not th.is_alive(), 300)
            assert th.is_alive(), "the burst ended before the kill"
            killed = sigkill(s)
            acked_at_kill = len(acked)
            assert wait_for(lambda: sum(a[1] != 200 and a[0] > killed for a in answers) >= 5, 120)
            t0 = time.monotonic()
            start_local_node(s)
            restart = time.monotonic() - t0
            acked_then = set(acked)  # before the read: a 200 after it is not in it
            kept_after_restart = stored(s, t)
            th.join(300)
        finally: done.set()
        failed = [(code, body.get('error')) for _, code, body, _ in answers if code != 200]
        ok = [dt for _, code, _, dt in answers if code == 200]
        kept = stored(s, t)
        print(f"\nlone node SIGKILLed during a webhook burst: {acked_at_kill} answered 200 before the kill; "
              f"{len(acked_then)} acknowledged by the restart, {len(kept_after_restart)} stored then; "
              f"{len(failed)} answers not 200 while it was down ({sorted(set(failed))}), restart {restart:.1f}s; "
              f"all {len(events)} events acknowledged {len(acked)}, stored {len(kept)}; "
              f"a 200 took {sum(ok) / len(ok):.2f}s on average")
        assert acked_then <= kept_after_restart.keys()
        assert failed and all(code == 503 for code, _ in failed), failed
        assert not th.is_alive() and acked == kept.keys() == {e['issue']['key'] for e in events}


def node_client(s: Settings, index: int) -> Client:
    "A client of node `index` alone (no partition awareness: every request is answered through that node)."
    c = Client(timeout=s.ignite_timeout, partition_aware=False, **client_options(s))
    c.connect(s.ignite_host, LocalNode(s, index).client_port)
    return c


def halted(s: Settings, nodes: int = 3) -> dict:
    "Node index -> the reason its failure handler gave for halting its JVM, for the nodes whose log says one."
    out = {}
    for i in range(nodes):
        log = LocalNode(s, i).log_path
        text = log.read_text(errors='replace') if log.exists() else ''
        if (at := text.find('JVM will be halted')) >= 0: out[i] = text[at:at + 400].splitlines()[0]
    return out


# Ignite 2.15 (the last release with Ignite ML, which bench compare uses) corrupts the TICKET index of a node that
# takes a full rebalance of the encrypted (TDE) cache group: 8 of 8 runs with the tenant's primary killed, also with
# 4 KB pages, SIGTERM, a wiped store, WAL kept during rebalancing; never with TDE off. The restarted node halts
# (CorruptedTreeException). Not seen since the tickets' JSON is stored compressed; if it comes back, the test xfails
# at the rejoin, and only there, with TDE on; with TDE off (authentication and TLS still on) it must pass.
KNOWN_TDE_BUG = ("Ignite 2.15: a full rebalance of an encrypted cache group corrupts the rejoining node's index "
                 "(CorruptedTreeException; see nbs/explanations/cluster_kills.md)")


def tde_rebalance_corruption(s: Settings) -> bool:
    "Whether a node halted on a corrupted B+tree: the known TDE rebalancing bug (with TDE on only), no other failure."
    return s.ignite_tde and any('CorruptedTreeException' in why for why in halted(s).values())


def primary_of(s: Settings, tenant: str, nodes: int = 3) -> int:
    "The index of the node that holds `tenant`'s TICKET rows as their primary (a local query sees primary rows only)."
    counts = []
    for i in range(nodes):
        c = node_client(s, i)
        try: counts.append(list(c.sql('SELECT COUNT(*) FROM ALLIEDIUM.TICKET WHERE tenant_id = ?', query_args=[tenant],
                                      local=True))[0][0])
        finally: c.close()
    assert sum(n > 0 for n in counts) == 1, counts
    return next(i for i, n in enumerate(counts) if n)


def rebalanced(s: Settings) -> bool:
    "True when every partition of every partitioned cache group has its primary and backups OWNING."
    with ignite_client(s) as c:
        groups = {g: (parts, backups) for g, parts, backups in c.sql(
            "SELECT CACHE_GROUP_ID, PARTITIONS_COUNT, BACKUPS FROM SYS.CACHE_GROUPS WHERE CACHE_MODE = 'PARTITIONED'")}
        rows = list(c.sql('SELECT CACHE_GROUP_ID, STATE, COUNT(*) FROM SYS.PARTITION_STATES '
                          'GROUP BY CACHE_GROUP_ID, STATE', page_size=4096))
        servers = len(list(c.sql('SELECT NODE_ID FROM SYS.NODES WHERE IS_CLIENT = FALSE')))
    owning = {g: n for g, state, n in rows if state == 'OWNING'}
    return (all(state == 'OWNING' for g, state, _ in rows if g in groups)
            and all(owning.get(g) == parts * min(backups + 1, servers) for g, (parts, backups) in groups.items()))


# each a cluster of its own (105-118 s on two cores: three nodes, a kill, a restart and a rebalance). TDE on (the
# default security) runs in `make test`: 8 of 8 runs corrupted the rejoining node before the tickets' JSON was stored
# compressed (29db06c), 3 of 3 passed after it (cause not established: nbs/explanations/cluster_kills.md), so the xfail
# on that bug (KNOWN_TDE_BUG) stays and says so if it comes back. TDE off is `bench` (`make bench`) and must pass.
@pytest.mark.parametrize('three_node_cluster', [pytest.param(True, id='tde-on'),
                                                pytest.param(False, id='tde-off', marks=pytest.mark.bench)],
                         indirect=True)
def test_sigkill_of_one_of_three_nodes_during_ingest_and_triage(three_node_cluster):
    """One node of three SIGKILLed while a bulk ingest writes and triage answers: the ingest goes on on the others
    and loses no acknowledged ticket, triage answers again, the node restarts, rejoins the baseline, rebalances,
    and every node counts the same tickets. Authentication and TLS on; TDE on in `make test` (xfail only on the Ignite
    bug that corrupted a node's index when it took a full rebalance of an encrypted group), off in `make bench`."""
    from alliedium.ingest import ingest_tickets
    from alliedium.models.triage import load_tenant_models
    from alliedium.serving.api import LocalBackend, make_api
    from alliedium.training import train_tenant
    s, r = three_node_cluster
    ports = [LocalNode(s, i).client_port for i in range(3)]
    assert client_addresses(s) == [(s.ignite_host, p) for p in ports]  # the thin client knows all three nodes
    with ignite_client(s) as c:
        assert c.partition_aware  # requests go to the node that holds the key
        assert [b for _, b in sorted(c.sql('SELECT CONSISTENT_ID, ONLINE FROM SYS.BASELINE_NODES'))] == [True] * 3
        assert list(c.sql("SELECT BACKUPS FROM SYS.CACHES WHERE CACHE_NAME = 'ALLIEDIUM_TICKET'")) == [[1]]
        assert ('TICKET' not in unencrypted_tables(c)) == s.ignite_tde  # the variant's TDE, as the nodes have it
    # a small tenant trained on real tickets: its models are rows in the cluster
    tt, key = tenant_of(s, 'kill3tri')
    t0 = time.monotonic()
    zk = [it for it in itertools.islice(read_issues(JIRA/'Zookeeper.jsonl.gz', tt), 700) if isinstance(it, Ticket)]
    ingest_tickets(tt, zk, s)
    train_tenant(tt, tasks=['assignee', 'priority'], settings=s)
    print(f"\ntriage tenant: {len(zk)} ZooKeeper tickets ingested and trained in {time.monotonic() - t0:.1f}s")
    asks = [{'fields': {'summary': i['fields']['summary'], 'description': i['fields'].get('description') or ''}}
            for i in raw_issues('Zookeeper', 760)[700:]]
    # triage through the HTTP API in this process, every request checking the active versions in Ignite
    st = s.model_copy(update=dict(serve_poll_seconds=0.01, ignite_timeout=3))
    http = TestClient(make_api(LocalBackend(st)), raise_server_exceptions=False)
    answers, stop = [], threading.Event()

    def triage_load():
        for ask in itertools.cycle(asks):
            if stop.is_set(): return
            t1 = time.monotonic()
            r = http.post(f'/v1/tenants/{tt}/triage', json=ask, headers={'Authorization': f'Bearer {key}'})
            answers.append((t1, time.monotonic(), r.status_code, r.json().get('error')))
            if r.status_code != 200: time.sleep(0.05)
    load = threading.Thread(target=triage_load, daemon=True)
    load.start()
    try:
        assert wait_for(lambda: sum(a[2] == 200 for a in answers) >= 3, 120), answers[-3:]
        tb, _ = tenant_of(s, 'kill3ing')
        files = [JIRA/'YARN.jsonl.gz']
        want = newest_versions(files, tb)
        ing = Ingest(s, tb, files, batch_size=100)
        assert wait_for(lambda: ing.acked or ing.proc.poll() is not None, 300)
        # the tenant's primary as the nodes count it: the thin client's get_best_node (given the str of the TicketKey's
        # affinity field) named another node in 6 of 8 runs, so the kill often missed the tenant's rows
        victim = primary_of(s, tb)
        assert wait_for(lambda: len(ing.acked) >= 500 or ing.proc.poll() is not None, 300)
        assert ing.proc.poll() is None, f"the ingest ended before the kill: {ing.wait()} {ing.err[-500:]}"
        killed = sigkill(s, victim)
        acked_at_kill = len(ing.acked)
        rc = ing.wait(300)
        ingest_done = time.monotonic() - killed
        kept = stored(s, tb)
        assert wait_for(lambda: any(a[2] == 200 and a[0] > killed for a in answers), 120), answers[-3:]
        after = [a for a in answers if a[1] > killed]
        errors = [(code, err) for _, _, code, err in after if code != 200]
        again = min(a[1] for a in after if a[2] == 200 and a[0] > killed) - killed
        fresh = load_tenant_models(tt, s)  # the models load from the two nodes left
        print(f"node{victim} (primary of the ingest's tenant) SIGKILLed: ingest acknowledged {acked_at_kill} "
              f"by the kill, exit {rc} {ing.summary} {ingest_done:.1f}s after it; acknowledged {len(ing.acked)}, "
              f"stored {len(kept)} of {len(want)}; triage: {len(errors)} answers not 200 after the kill "
              f"{sorted(set(errors))}, a 200 again {again:.2f}s after the kill")
        retried = ing.err.count('writing a batch of')
        print(f"the ingest wrote {retried} batch(es) again after the kill: "
              f"{sorted({line.split(': ', 1)[-1][:90] for line in ing.err.splitlines() if 'writing a batch' in line})}")
        assert rc == 0, ing.err[-1500:]
        assert ing.acked <= kept.keys() and kept == want
        assert all(code == 503 for code, _ in errors), errors
        assert fresh.versions.keys() == {'assignee', 'priority'} and fresh.triage(asks[0])['priority'] is not None
        # the node back: it rejoins the baseline and takes its partitions back
        t0 = time.monotonic()
        start_local_node(s, nodes=3)
        rejoined = time.monotonic() - t0
        # (a node that halts ends the wait: on the known bug the xfail below, on anything else a failure)
        assert wait_for(lambda: rebalanced(s) or bool(halted(s)), 300, 0.5), "not rebalanced within 300 s"
        rebalance = time.monotonic() - t0 - rejoined
        served = sum(a[2] == 200 for a in answers)
    finally:
        stop.set()
        load.join(60)
    if tde_rebalance_corruption(s): pytest.xfail(KNOWN_TDE_BUG + f": {halted(s)}")
    with ignite_client(s) as c:
        baseline = sorted(c.sql('SELECT CONSISTENT_ID, ONLINE FROM SYS.BASELINE_NODES'))
    counts, local = [], []
    try:
        for i in range(3):
            c = node_client(s, i)
            try:
                counts.append([list(c.sql(f'SELECT COUNT(*) FROM ALLIEDIUM.{table} WHERE tenant_id = ?',
                                          query_args=[t]))[0][0]
                               for table in ('TICKET', 'TICKET_STATE') for t in (tb, tt)])
                local.append(list(c.sql('SELECT COUNT(*) FROM ALLIEDIUM.TICKET WHERE tenant_id = ?', query_args=[tb],
                                        local=True))[0][0])
            finally: c.close()
    except Exception as e:
        if tde_rebalance_corruption(s): pytest.xfail(KNOWN_TDE_BUG + f": {halted(s)}")
        raise AssertionError(f"node{len(counts)}'s view could not be read ({type(e).__name__}: {e}); "
                             f"nodes that halted: {halted(s)}") from e
    assert not halted(s), halted(s)
    print(f"node{victim} restarted and rejoined in {rejoined:.1f}s, rebalanced {rebalance:.1f}s later; "
          f"baseline {baseline}; per node (TICKET, TICKET_STATE) x (ingest tenant, triage tenant): {counts}; "
          f"the ingest tenant's rows in each node's local SQL (its primary partitions): {local}; triage 200s in all: {served}")
    assert baseline == [['node0', True], ['node1', True], ['node2', True]]
    assert counts == [[len(want), len(zk), len(want), len(zk)]] * 3
    assert sorted(local)[-1] == len(want)
