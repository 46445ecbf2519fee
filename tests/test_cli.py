"The `alliedium` console script, run as a user runs it (a subprocess) against the session's node."
import json, os, subprocess, sys, time
from pathlib import Path

from alliedium.schema import SCHEMA_VERSION

BIN = Path(sys.executable).parent/'alliedium'


def run(*args, env=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_status_json(ignite):
    r = run('ignite', 'status', '--json')
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st['state'] == 'ACTIVE' and st['servers'] == 1


def test_status_text_names_version_state_and_topology(ignite):
    r = run('ignite', 'status')
    assert r.returncode == 0, r.stderr
    assert 'Ignite 2.15.0: cluster ACTIVE, 1 server(s)' in r.stdout and 'node0' in r.stdout


def test_second_start_says_so_and_exits_0(ignite):
    r = run('ignite', 'start')
    assert r.returncode == 0, r.stderr
    assert 'already running' in r.stdout and f'Schema {SCHEMA_VERSION} ready' in r.stdout


def test_unreachable_cluster_is_one_clear_line(ignite, tmp_path):
    from alliedium.ignite import free_port
    r = run('ignite', 'status', env=dict(ALLIEDIUM_IGNITE_HOSTS=f'127.0.0.1:{free_port()}'))
    assert r.returncode == 3
    assert 'no Ignite node answers' in r.stderr and 'Traceback' not in r.stderr + r.stdout


def test_bad_setting_is_one_clear_line(ignite):
    r = run('ignite', 'status', env=dict(ALLIEDIUM_IGNITE_CLIENT_PORT='many'))
    assert r.returncode == 1
    assert 'ALLIEDIUM_IGNITE_CLIENT_PORT' in r.stderr and 'Traceback' not in r.stderr


def test_serve_stop_leaves_no_process_behind(ignite, tmp_path):
    "`serve --background` then `serve --stop`: no process of the service's session survives."
    # Ray's agents included: they re-parent to init and ignore SIGTERM
    import psutil
    from alliedium.ignite import free_port

    def session_of(pid):
        return [p for p in psutil.process_iter() if _sid(p.pid) == pid]

    env = dict(ALLIEDIUM_VAR_DIR=str(tmp_path), ALLIEDIUM_SERVE_PORT=str(free_port()))
    r = run('serve', '--background', env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    pid = int((tmp_path/'serve'/'serve.pid').read_text())
    names = [' '.join(p.cmdline()) for p in session_of(pid)]
    assert any('raylet' in n for n in names), names
    assert any('DashboardAgent' in n or 'dashboard/agent' in n for n in names), names
    r = run('serve', '--stop', env=env)
    assert r.returncode == 0 and 'Service stopped.' in r.stdout, r.stdout + r.stderr
    assert [' '.join(p.cmdline()) for p in session_of(pid)] == [] and not psutil.pid_exists(pid)
    assert not (tmp_path/'serve'/'serve.pid').exists()


def test_a_service_that_does_not_stop_in_time_is_killed_with_all_it_started(ignite, tmp_path):
    "`serve_stop` past its timeout kills the service and every process of its session."
    import psutil
    from alliedium.config import Settings
    from alliedium.ignite import free_port
    from alliedium.serving.runtime import serve_background, serve_stop
    s = Settings(**{**ignite.model_dump(exclude={'home'}), 'var_dir': tmp_path, 'serve_port': free_port()})
    pid, _ = serve_background(s, timeout=300)
    ours = lambda: [p for p in psutil.process_iter() if p.pid != os.getpid() and _sid(p.pid) == pid]
    assert len(ours()) > 3  # the service, the raylet, GCS, agents, workers
    assert serve_stop(s, timeout=0.2)  # no time for Ray's own shutdown: the service is killed mid-way
    time.sleep(1)
    assert [p.pid for p in ours() if p.status() != psutil.STATUS_ZOMBIE] == []


def _sid(pid):
    try: return os.getsid(pid)
    except OSError: return None
