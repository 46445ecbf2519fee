"""Kill tests of the serving side with real processes (issue 17 item 5, issue 21 item 5).

* A Serve replica of the tenant-model deployment is SIGKILLed under a steady triage load on the session's Ray:
  every answer is a 200 or a clear 503 (never a 500, never a hang past the client's timeout), the errors fall
  inside the restart window only, and 200s follow once Serve has restarted the replica.

The figures (error window, counts of 200/503/other) are printed (`pytest -s` shows them), never asserted on time.
"""
import json, os, secrets, shutil, signal, subprocess, sys, tempfile, threading, time, uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from alliedium.config import Settings
from alliedium.serving.api import settings_overrides
from alliedium.serving.runtime import load_app
from alliedium.tenants import create_tenant

from test_serving import bearer, sample_issues

CLIENT_TIMEOUT = 30.0  # seconds a triage may take before the client gives up (a hang counts as an error)


class Load:
    """Triage requests at a steady rate from a few threads (single issues, plus one thread of batches so that a
    request is in the model replica when it dies); each answer recorded as (sent, answered, status)."""
    def __init__(self, url: str, tenant: str, key: str, issue: dict, threads: int = 3, rate: float = 6.0,
                 batch: int = 50):
        self.url, self.headers = url, bearer(key)
        path = f'/v1/tenants/{tenant}/triage'
        self.jobs = [(path, issue)] * threads + ([(f'{path}/batch', {'issues': [issue] * batch})] if batch else [])
        self.period = threads / rate  # each single-issue thread sends one request per period
        self.results, self.bodies, self.inflight, self.stop = [], {}, {}, threading.Event()
        self.lock = threading.Lock()

    def _run(self, path: str, body: dict):
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT) as http:
            while not self.stop.is_set():
                t0 = time.monotonic()
                with self.lock: self.inflight[threading.get_ident()] = (path, t0)
                try:
                    r = http.post(path, json=body, headers=self.headers)
                    status, text = r.status_code, (r.text[:300], r.headers.get('retry-after'))
                except httpx.HTTPError as e: status, text = type(e).__name__, (str(e)[:300], None)
                t1 = time.monotonic()
                with self.lock:
                    self.inflight.pop(threading.get_ident(), None)
                    self.results.append((t0, t1, status))
                    self.bodies.setdefault(status, text)
                if not path.endswith('/batch'): self.stop.wait(max(0.0, self.period - (t1 - t0)))

    def __enter__(self):
        self.workers = [threading.Thread(target=self._run, args=job, daemon=True) for job in self.jobs]
        for w in self.workers: w.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for w in self.workers: w.join(CLIENT_TIMEOUT + 5)

    def snapshot(self) -> list:
        with self.lock: return sorted(self.results)

    def batch_in_flight(self, at_least: float = 0.05, timeout: float = 30) -> bool:
        "Wait until a batch request has been on its way for `at_least` seconds (True), or `timeout` passes."
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with self.lock:
                if any(p.endswith('/batch') and time.monotonic() - t > at_least for p, t in self.inflight.values()):
                    return True
            time.sleep(0.005)
        return False

    def wait_for_200s(self, n: int, after: float, timeout: float) -> bool:
        "Wait until `n` answers sent after `after` (monotonic) are 200 in a row (the newest ones)."
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            tail = [s for a, _, s in self.snapshot() if a >= after][-n:]
            if len(tail) == n and all(s == 200 for s in tail): return True
            time.sleep(0.2)
        return False


def kill_report(name: str, results: list, killed_at: float, bodies: dict) -> dict:
    "Counts and the error window around a kill at `killed_at`: printed, and returned for the assertions."
    counts = Counter(s for _, _, s in results)
    bad = [(a, b, s) for a, b, s in results if s != 200]
    window = (min(a for a, _, _ in bad) - killed_at, max(b for _, b, _ in bad) - killed_at) if bad else None
    before = sum(1 for a, _, s in results if a < killed_at and s == 200)
    after = [s for a, _, s in results if bad and a > window[1] + killed_at]
    slowest = max(results, key=lambda r: r[1] - r[0])
    print(f"\n{name}: {len(results)} triage requests, {dict(counts)}; 200s before the kill: {before}; slowest answer "
          f"{slowest[1] - slowest[0]:.2f}s (sent {slowest[0] - killed_at:+.2f}s from the kill, {slowest[2]})")
    if window: print(f"  errors from {window[0]:+.2f}s to {window[1]:+.2f}s around the kill "
                     f"({window[1] - max(window[0], 0):.2f}s window), then {len(after)} answers, "
                     f"{sum(s == 200 for s in after)} of them 200")
    else: print("  no error at all: every request answered 200")
    for s, (text, retry) in bodies.items():
        if s != 200: print(f"  {s}: {text!r} (Retry-After: {retry})")
    return dict(counts=counts, bad=bad, window=window, before=before, after=after)


def check_kill(rep: dict, killed_at: float, bodies: dict):
    "200 or a clear 503 only; errors only after the kill, none of them a hang; 200s before and after."
    assert set(rep['counts']) <= {200, 503}, (rep['counts'], bodies)   # no 500, no client timeout
    if 503 in bodies:  # a clear one: what failed, and when to retry
        text, retry = bodies[503]
        assert retry and '"error":' in text and '"retry_after":' in text, bodies[503]
    assert rep['before'] > 0, "no 200 before the kill: the load did not reach the service"
    assert all(b >= killed_at for _, b, _ in rep['bad']), "an error answered before the kill"
    assert not rep['bad'] or (rep['after'] and all(s == 200 for s in rep['after'])), rep['after'][:20]


def test_a_dead_replica_is_a_503_to_retry():
    "What the ingress answers when the model replica under a request dies or is silent: 503 with Retry-After."
    import ray
    from alliedium.serving.api import ModelsUnavailable, http_error, http_status
    assert http_status(ray.exceptions.ActorDiedError()) == 503
    assert http_status(ray.exceptions.ActorUnavailableError('replica restarting', None)) == 503
    r = http_error(ModelsUnavailable("the replica holding this tenant's models stopped: retry"), 't')
    assert r.status_code == 503 and int(r.headers['retry-after']) > 0, r.body
    assert json.loads(r.body)['error'] == 'ModelsUnavailable', r.body


def trained_tenant(ignite, prefix: str) -> tuple[str, str, dict]:
    "A tenant of the test's own, ingested from the ZooKeeper sample, its priority model trained: (id, key, issue)."
    from alliedium.ingest import ingest_files
    from alliedium.jira import sample_dir
    from alliedium.training import train_tenant
    tenant = f'{prefix}-{uuid.uuid4().hex[:8]}'
    key = create_tenant(tenant, settings=ignite)
    ingest_files(tenant, [sample_dir(ignite)/'Zookeeper.jsonl.gz'], settings=ignite)
    train_tenant(tenant, tasks=['priority'], settings=ignite)
    raw = sample_issues('Zookeeper', 1)[0]
    issue = {'fields': {k: raw['fields'][k] for k in ('summary', 'description', 'issuetype', 'reporter')}}
    return tenant, key, issue


@pytest.fixture(scope='module')
def zk_tenant(ignite):
    return trained_tenant(ignite, 'kill')


def replica_actors(app: str, deployment: str) -> list[dict]:
    "The live replicas of `app`'s `deployment` on this process's Ray, from its GCS actor table (no dashboard here)."
    from ray._private.state import actors
    return [dict(actor_id=a['ActorID'], pid=a['Pid'], node_id=a['Address']['NodeID'])
            for a in actors(actor_state_name='ALIVE').values()
            if a['ActorClassName'] == f'ServeReplica:{app}:{deployment}']


def test_sigkill_a_model_replica_under_triage_load(serve_url, ignite, zk_tenant):
    "SIGKILL the ModelPool replica while triage requests stream in: 503s only while Serve restarts it, then 200s."
    from ray import serve
    app = f'kills-{uuid.uuid4().hex[:6]}'
    s = Settings(**{**settings_overrides(ignite), 'serve_poll_seconds': 1.0, 'serve_models_per_replica': 4,
                    'serve_replica_cpus': 0.1, 'serve_model_replicas': 1, 'serve_model_timeout': 10.0})
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s), name=app,
              route_prefix=f'/{app}')
    tenant, key, issue = zk_tenant
    try:
        with httpx.Client(base_url=f'{serve_url}/{app}', timeout=CLIENT_TIMEOUT) as http:
            for _ in range(12):  # the first call loads the tenant's models (503 while that takes over 10 s)
                r = http.post(f'/v1/tenants/{tenant}/triage', json=issue, headers=bearer(key))
                if r.status_code != 503: break
                time.sleep(int(r.headers['retry-after']))
            assert r.status_code == 200, r.text
        [victim] = replica_actors(app, 'ModelPool')
        with Load(f'{serve_url}/{app}', tenant, key, issue) as load:
            assert load.wait_for_200s(6, time.monotonic(), 60), load.snapshot()[-10:]
            in_flight = load.batch_in_flight()
            killed_at = time.monotonic()
            os.kill(victim['pid'], signal.SIGKILL)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 90:  # Serve notices the dead actor and starts a new replica
                new = [a for a in replica_actors(app, 'ModelPool') if a['pid'] != victim['pid']]
                if new and serve.status().applications[app].status.value == 'RUNNING': break
                time.sleep(0.5)
            back_at = time.monotonic()
            recovered = load.wait_for_200s(10, back_at, 60)
            time.sleep(2)
        rep = kill_report(f"SIGKILL of ModelPool replica pid {victim['pid']}", load.snapshot(), killed_at, load.bodies)
        print(f"  a batch was in flight at the kill: {in_flight}; new replica {[a['pid'] for a in new]} RUNNING "
              f"{back_at - killed_at:.2f}s after the kill")
        assert new, "Serve did not start a new replica within 90s"
        assert recovered, load.snapshot()[-20:]
        check_kill(rep, killed_at, load.bodies)
    finally:
        serve.delete(app)


# ---- A 2-node Ray cluster on this machine (issue 21 item 5) ----

def free_ports(n: int) -> list[int]:
    "`n` distinct free local ports."
    from alliedium.ignite import free_port
    ports = []
    while len(ports) < n:
        if (p := free_port()) not in ports: ports.append(p)
    return ports


def _higher_priority():
    "A node starts at a higher priority when allowed: on a busy machine Ray gives a raylet 30 s to register."
    try: os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - 5)
    except OSError: pass


class LocalRayNode:
    "One `ray start --block` in a process session of its own: its own temp dir, free ports; killed by session."
    def __init__(self, tmp: Path, env: dict, head: str | None = None, num_cpus: float = 1, resources: dict = None,
                 object_store_mb: int = 100):
        self.tmp, self.env, self.head = tmp, env, head
        self.args = [f'--temp-dir={tmp}', '--node-ip-address=127.0.0.1', f'--num-cpus={num_cpus}',
                     f'--object-store-memory={object_store_mb << 20}', f'--resources={json.dumps(resources or {})}']
        tmp.mkdir(parents=True, exist_ok=True)
        self._start()

    def _start(self):
        "`ray start` on fresh free ports."
        ports = free_ports(8)
        cmd = [str(Path(sys.executable).parent/'ray'), 'start', '--block', '--disable-usage-stats', *self.args,
               f'--node-manager-port={ports[1]}', f'--object-manager-port={ports[2]}',
               f'--dashboard-agent-grpc-port={ports[3]}', f'--dashboard-agent-listen-port={ports[4]}',
               f'--metrics-export-port={ports[5]}', f'--runtime-env-agent-port={ports[6]}']
        cmd += [f'--address={self.head}'] if self.head else ['--head', f'--port={ports[0]}', '--include-dashboard=false',
                                                             f'--ray-client-server-port={ports[7]}']
        self.address = self.head or f'127.0.0.1:{ports[0]}'
        self.log = open(self.tmp/'ray-start.log', 'wb')
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True, preexec_fn=_higher_priority)

    def wait_started(self, timeout: float = 240, attempts: int = 3):
        "Wait for `ray start` to report the node up; a start that failed (a port taken meanwhile) is retried."
        import psutil
        for attempt in range(attempts):
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout and self.proc.poll() is None:
                if b'Ray runtime started' in (self.tmp/'ray-start.log').read_bytes():
                    for p in self.processes():  # up: back to normal priority (workers it starts later inherit it)
                        try: p.nice(os.getpriority(os.PRIO_PROCESS, 0))
                        except (OSError, psutil.Error): pass
                    return self
                time.sleep(0.5)
            log = (self.tmp/'ray-start.log').read_text()[-2000:]
            self.kill()
            if attempt < attempts - 1:
                print(f"ray start failed (attempt {attempt + 1}), retried: {log[-300:]!r}")
                self._start()
        raise AssertionError(f"ray start did not come up: {log}")

    def processes(self) -> list:
        "Every live process of this node's session (raylet, its workers, agents; GCS on the head)."
        import psutil
        procs = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid: procs.append(p)
            except (psutil.Error, OSError): pass
        return procs

    def kill(self) -> int:
        "SIGKILL every process of the node (raylet, workers, agents): what a lost machine looks like; how many."
        import psutil
        procs = self.processes()
        for p in procs:
            try: p.kill()
            except psutil.Error: pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait(10)
        self.log.close()
        return len(procs)


DRIVER = r'''
import json, os, sys
import ray
from ray import serve
from ray._private.state import actors
from alliedium.config import Settings
from alliedium.serving.api import settings_overrides
args = json.loads(sys.argv[1])
sys.path.insert(0, args['home'])
from serve.app import triage_api_deployment
ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False)
serve.start(http_options=dict(host='127.0.0.1', port=args['port']), proxy_location='HeadOnly')
s = Settings(**args['settings'])
opts = settings_overrides(s)
# the one-hop layout (serve_models_in_ingress): the proxy spreads requests over both nodes' replicas
ingress = triage_api_deployment(s).options(num_replicas=2, max_replicas_per_node=1,
                                           ray_actor_options=dict(num_cpus=s.serve_replica_cpus))
serve.run(ingress.bind(None, opts), name='triage', route_prefix='/')
for line in sys.stdin:
    if line.strip() != 'state': break
    nodes = {n['NodeID']: 'node2' if 'node2' in n['Resources'] else 'head' for n in ray.nodes() if n['Alive']}
    reps = [dict(pid=a['Pid'], node=nodes.get(a['Address']['NodeID'], 'dead'), cls=a['ActorClassName'].split(':')[-1])
            for a in actors(actor_state_name='ALIVE').values() if a['ActorClassName'].startswith('ServeReplica:triage:')]
    st = serve.status().applications['triage']
    print('@@' + json.dumps(dict(status=st.status.value, nodes=sorted(nodes.values()), replicas=reps,
                          deployments={k: v.status.value for k, v in st.deployments.items()})), flush=True)
'''


class ClusterDriver:
    "A driver process on the cluster (RAY_ADDRESS set for it only): deploys the triage app, reports its replicas."
    def __init__(self, env: dict, address: str, port: int, settings: Settings, log: Path):
        args = json.dumps(dict(home=str(settings.home), port=port, settings=settings_overrides(settings)))
        self.err = open(log, 'wb')
        self.proc = subprocess.Popen([sys.executable, '-c', DRIVER, args], env={**env, 'RAY_ADDRESS': address},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     start_new_session=True)

    def state(self) -> dict:
        self.proc.stdin.write('state\n'); self.proc.stdin.flush()
        while (line := self.proc.stdout.readline()) and not line.startswith('@@'): pass  # Ray's own lines
        assert line, f"the driver exited: {Path(self.err.name).read_text()[-3000:]}"
        return json.loads(line[2:])

    def wait(self, what, timeout: float) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = self.state()
            if what(st): return st
            time.sleep(0.5)
        raise AssertionError(f"not reached within {timeout}s: {st}")

    def close(self):
        try: self.proc.stdin.close(); self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired): self.proc.kill()
        self.err.close()


def replica_nodes(st: dict) -> list:
    "The nodes the app's replicas run on."
    return sorted(r['node'] for r in st['replicas'] if r['cls'] == 'TriageAPI')


def test_kill_the_worker_node_of_a_two_node_ray_cluster(ignite, zk_tenant):
    """A head and a second node (`ray start --address`) on this machine, a replica of the triage app on each (the
    one-hop layout: models held by the ingress replicas, which the proxy on the head spreads requests over); under
    triage load every process of the second node is SIGKILLed: 200s or 503s only, errors only around the kill, then
    200s from the head's replica; a new second node joins and Serve places the second replica there again."""
    from alliedium.ignite import free_port
    from alliedium.serving.runtime import ray_env
    tenant, key, issue = zk_tenant
    tmp = Path(tempfile.mkdtemp(prefix='rk-'))  # short: Ray's unix sockets live below it
    env = {k: v for k, v in os.environ.items() if not k.startswith('RAY_ADDRESS')}
    env.update(ray_env(ignite), RAY_TMPDIR=str(tmp), RAY_USAGE_STATS_ENABLED='0',  # off /tmp/ray, off ~/.ray:
               RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=secrets.token_hex(32),  # a token of its own, for its processes only
               # on a loaded machine a raylet's agents may take over Ray's 15 s to come up: wait longer
               RAY_agent_register_timeout_ms='120000', RAY_raylet_start_wait_time_s='120')
    nodes, driver, port = [], None, free_port()
    s = Settings(**{**settings_overrides(ignite), 'serve_poll_seconds': 1.0, 'serve_models_per_replica': 4,
                    'serve_replica_cpus': 0.1, 'serve_models_in_ingress': True})
    try:
        t0 = time.monotonic()
        head = LocalRayNode(tmp/'head', env, num_cpus=1, resources={'head': 1})
        nodes.append(head.wait_started())
        nodes.append(LocalRayNode(tmp/'n2', env, head=head.address, num_cpus=1, resources={'node2': 1}).wait_started())
        started = time.monotonic() - t0
        driver = ClusterDriver(env, head.address, port, s, tmp/'driver.log')
        st = driver.wait(lambda st: st['status'] == 'RUNNING', 240)
        deployed = time.monotonic() - t0 - started
        print(f"\n2-node Ray cluster up in {started:.1f}s, triage app RUNNING {deployed:.1f}s later: {st}")
        assert st['nodes'] == ['head', 'node2'] and replica_nodes(st) == ['head', 'node2'], st
        url = f'http://127.0.0.1:{port}'
        with Load(url, tenant, key, issue) as load:
            assert load.wait_for_200s(6, time.monotonic(), 90), load.snapshot()[-10:]
            in_flight = load.batch_in_flight()
            killed_at = time.monotonic()
            n = nodes[1].kill()
            st = driver.wait(lambda st: st['nodes'] == ['head'], 120)
            gone_at = time.monotonic()
            alone = load.wait_for_200s(10, gone_at, 60)
            alone_at = time.monotonic()
            nodes.append(LocalRayNode(tmp/'n3', env, head=head.address, num_cpus=1,
                                      resources={'node2': 1}).wait_started())
            st = driver.wait(lambda st: st['status'] == 'RUNNING' and replica_nodes(st) == ['head', 'node2'], 180)
            back_at = time.monotonic()
            again = load.wait_for_200s(10, back_at, 60)
        rep = kill_report(f"SIGKILL of the second Ray node ({n} processes)", load.snapshot(), killed_at, load.bodies)
        print(f"  a batch was in flight at the kill: {in_flight}; node declared dead after {gone_at - killed_at:.1f}s; "
              f"10 200s in a row by {alone_at - killed_at:.1f}s;"
              f" a new second node's replica RUNNING {back_at - killed_at:.1f}s after the kill: {st}")
        assert alone and again, load.snapshot()[-20:]
        check_kill(rep, killed_at, load.bodies)
    finally:
        if driver: driver.close()
        for node in reversed(nodes):
            if node.proc.poll() is None or node.processes(): node.kill()
        shutil.rmtree(tmp, ignore_errors=True)
