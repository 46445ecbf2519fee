"""Deep models (PyTorch) per tenant: fitted on real tickets, stored as safetensors + JSON in the registry's verified
artifact, trained beside the classical family and kept only where they score better; the package and the classical
paths work without PyTorch."""
import subprocess, sys, uuid

import numpy as np
import pytest

from alliedium.registry import ArtifactRefused, dump_artifact, list_models, load_artifact
from fixtures_models import jira_frame

NO_TORCH = "deep models need PyTorch: the optional extra [dl] (make setup-dl)"


@pytest.fixture(scope='module')
def storm():
    from alliedium.features import temporal_split
    return temporal_split(jira_frame('Storm'), 0.2)


@pytest.fixture(scope='module')
def fitted(storm):
    pytest.importorskip('torch', reason=NO_TORCH)
    from alliedium.models import new_model
    train, _ = storm
    return {t: new_model(t, 'deep', epochs=4).fit(train) for t in ('priority', 'labels')}


def test_deep_models_answer_like_their_classical_family(fitted, storm):
    from alliedium.evaluation import multilabel_metrics, priority_metrics
    _, test = storm
    p, lab = fitted['priority'], fitted['labels']
    P = p.proba(test)
    assert P.shape == (len(test), len(p.classes_)) and np.allclose(P.sum(1), 1, atol=1e-5)
    a = p.predict(test.head(2))[0]
    assert a['priority']['label'] in p.classes_ and set(a['priority']['scores']) == set(p.classes_)
    assert 0 <= a['rank_score'] <= 1 and p.device_ in ('cpu', 'cuda') and p.epochs_ >= 1
    assert all(set(s) <= set(lab.classes_) and len(s) <= lab.max_values for s in lab.predict_sets(test))
    assert len(lab.thresholds_) == len(lab.classes_) > 0
    m, f = priority_metrics(p, test), multilabel_metrics(lab, test)
    assert 0 <= m['macro_f1'] <= 1 and m['n_test'] > 0 and 0 <= f['micro_f1'] <= 1


def test_artifact_is_safetensors_and_json_and_verified(fitted, storm):
    import json
    from safetensors.numpy import load
    from alliedium.models.deep import DeepModel
    _, test = storm
    m = fitted['priority']
    tensors = load(m.weights_)  # tensors only: nothing to execute
    assert set(tensors) == {'emb.weight', 'hidden.weight', 'hidden.bias', 'out.weight', 'out.bias'}
    cfg = json.loads(m.__getstate__()['config'])
    assert cfg['vocab'][0] in m.vocab_ and cfg['arch']['vocab_size'] == len(cfg['vocab']) + 1
    data, fmt = dump_artifact(m)
    again = load_artifact(data, fmt)
    assert isinstance(again, DeepModel) and np.allclose(again.proba(test), m.proba(test), atol=1e-6)
    bad = bytearray(data); bad[len(bad) // 2] ^= 1
    with pytest.raises(ArtifactRefused, match='sha256'): load_artifact(bytes(bad), fmt)
    # weights changed inside a well-formed archive (its own digest recomputed): the model's sha256 refuses them
    w = bytearray(m.weights_); w[-1] ^= 1
    forged = DeepModel.__new__(DeepModel)
    forged.__dict__.update(m.__dict__); forged.weights_ = bytes(w)
    with pytest.raises(ArtifactRefused, match='do not match the sha256'): load_artifact(*dump_artifact(forged))


def test_training_keeps_the_better_family(ignite):
    pytest.importorskip('torch', reason=NO_TORCH)
    from alliedium.tenants import create_tenant
    from alliedium.training import train_frame
    t = f'deep-{uuid.uuid4().hex[:8]}'
    create_tenant(t, settings=ignite)
    out = train_frame(t, jira_frame('Storm'), ['priority', 'labels'], ignite.model_copy(update=dict(deep_tasks='labels')))
    assert 'other' not in out['priority'] and out['priority']['family'] == 'classical'
    rows = [r for r in list_models(t, 'labels', settings=ignite)]
    assert sorted(r['metrics']['family'] for r in rows) == ['classical', 'deep']
    active, = [r for r in rows if r['active']]
    other, = [r for r in rows if not r['active']]
    f1 = lambda r: r['metrics']['check']['micro_f1']
    assert f1(active) > f1(other) or (f1(active) == f1(other) and active['metrics']['family'] == 'classical')
    assert 'the other candidate scored better' in other['metrics']['decision']['reason']
    assert active['metrics']['decision']['promoted'] and other['metrics']['device'] in ('cpu', 'classical', 'cuda')
    deep, = [r for r in rows if r['metrics']['family'] == 'deep']
    assert deep['metrics']['device'] in ('cpu', 'cuda')
    print(f"Storm labels: {active['metrics']['family']} kept, micro-F1 {f1(active):.4f} vs {f1(other):.4f}")


def test_package_and_classical_paths_work_without_torch(tmp_path):
    "With PyTorch (and safetensors) unimportable, alliedium imports, a classical model trains, a deep one says why not."
    code = f"""
import sys
class NoDL:  # as if the extra [dl] were not installed: importing torch or safetensors fails
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'safetensors'): raise ImportError(f'No module named {{name!r}}')
sys.meta_path.insert(0, NoDL())
sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
import alliedium.models, alliedium.training, alliedium.serving.api, alliedium.models.triage, alliedium.registry
from alliedium.models import new_model
from alliedium.models.deep import TorchMissing, torch_available
from fixtures_models import jira_frame
df = jira_frame('Zookeeper', 400)
assert not torch_available()
print(new_model('priority').fit(df).predict(df.head(1))[0]['priority']['label'])
try: new_model('priority', 'deep').fit(df)
except TorchMissing as e: print('refused:', e)
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'refused: deep models need PyTorch' in r.stdout and 'make setup-dl' in r.stdout, r.stdout
