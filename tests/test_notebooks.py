"""Every notebook's test cells, run by nbdev-test, including the cells flagged `ignite`
(they use the session's node through the environment)."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_nbdev_test_with_ignite_cells(ignite):
    r = subprocess.run([str(Path(sys.executable).parent/'nbdev-test'), '--flags', 'ignite', '--n-workers', '2'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert 'Success.' in r.stdout


def test_notebooks_and_package_agree():
    "nbdev-export would change nothing: no module was hand-edited, no notebook left unexported."
    before = subprocess.run(['git', 'status', '--porcelain', '--', 'alliedium'], cwd=ROOT, capture_output=True, text=True).stdout
    r = subprocess.run([str(Path(sys.executable).parent/'nbdev-export')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = subprocess.run(['git', 'status', '--porcelain', '--', 'alliedium'], cwd=ROOT, capture_output=True, text=True).stdout
    assert before == after, f"nbdev-export changed alliedium/:\n{after}"


def test_readme_is_rendered_from_index_notebook(tmp_path):
    "README.md is nbs/index.ipynb rendered (make export): the docs match the code."
    r = subprocess.run([str(Path(sys.executable).parent/'jupyter'), 'nbconvert', '--log-level=ERROR', '--to', 'markdown',
                        '--execute', 'nbs/index.ipynb', '--output-dir', str(tmp_path), '--output', 'README'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'README.md').read_text() == (ROOT/'README.md').read_text(), "README.md is stale: run `make export`"
