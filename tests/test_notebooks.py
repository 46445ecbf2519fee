"""Every notebook's test cells, run by nbdev-test, including the cells flagged `ignite`
(they use the session's node through the environment)."""
import hashlib, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_nbdev_test_with_ignite_cells(ignite):
    r = subprocess.run([str(BIN/'nbdev-test'), '--flags', 'ignite', '--n-workers', '2'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert 'Success.' in r.stdout


def package_hashes() -> dict[str, str]:
    "sha256 of every file under alliedium/ (bytecode caches left out), by path."
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT/'alliedium').rglob('*')) if p.is_file() and '__pycache__' not in p.parts}


def test_notebooks_and_package_agree():
    "nbdev-export would change nothing: no module was hand-edited, no notebook left unexported."
    before = package_hashes()
    r = subprocess.run([str(BIN/'nbdev-export')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = package_hashes()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"nbdev-export changed (or created, or removed) these files: {changed}"


def test_readme_is_rendered_from_index_notebook(tmp_path):
    "README.md is nbs/index.ipynb rendered (make export): the docs match the code."
    r = subprocess.run([str(BIN/'jupyter'), 'nbconvert', '--log-level=ERROR', '--to', 'markdown',
                        '--execute', 'nbs/index.ipynb', '--output-dir', str(tmp_path), '--output', 'README'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'README.md').read_text() == (ROOT/'README.md').read_text(), "README.md is stale: run `make export`"
