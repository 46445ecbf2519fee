"""`alliedium bench serve --security` runs end to end, small: two nodes of its own (security off and on), the same
trained tenant on each, triage through the real HTTP API on the session's Ray Serve; both modes reported with every
process's CPU. Figures are printed, never asserted (they are the benchmark's)."""
import pytest

from alliedium.bench.security import MODES, SERVER, bench_serve_security, security_table


@pytest.mark.bench
def test_bench_serve_security_reports_both_modes(serve_url):
    r = bench_serve_security(requests=24, levels=(1,), rounds=2, url=serve_url, heap='512m')
    print(security_table(r))
    assert r['plain_client_refused'] == {'off': False, 'on': True}  # the 'on' node's security is really on
    runs = r['c=1']
    for m in MODES:
        assert runs[m]['n'] == 24 and runs[m]['errors'] == 0, (m, runs[m])
        assert runs[m]['replicas cpu_ms'] > 0 and runs[m]['server cpu_ms'] > 0, (m, runs[m])
        assert len(runs[m]['server cpu_ms per round']) == 2
    assert runs['on/off']['server cpu/request'] > 0 and len(runs['on/off']['per round']) == 3
    assert set(f'{g} cpu_ms' for g in SERVER) <= set(runs['on'])
    from ray import serve
    assert not [a for a in serve.status().applications if a.startswith('bench-security-')]  # its apps are gone
