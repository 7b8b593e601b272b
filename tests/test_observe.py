"""Observing information flow (tecli.observe): the estimators against independent computations, a
probe's measures against the layers recomputed by hand, and observed runs that train exactly as
unobserved ones (in process, through `tecli run`, and in a sweep)."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import mutual_info_score
from sqlalchemy import select
from sqlalchemy.orm import Session
from sweeps import TINY, invoke

from tecli.checkpoint import dumps, loads
from tecli.data import load_dataset
from tecli.db.schema import Epoch, Observation, Run
from tecli.db.store import open_database
from tecli.observe import DEFAULT_PROBE
from tecli.observe import estimators as est
from tecli.observe.probe import TE_PAIRS
from tecli.spec import RunSpec, TEConfig
from tecli.sweep.file import parse_sweep
from tecli.te import engine
from tecli.train import train

RNG = np.random.default_rng(7)


def bits(nats: float) -> float:
    return nats / math.log(2)


# ---------------------------------------------------------------- estimators


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.5])
def test_neuron_entropy_is_the_mean_binary_entropy_of_the_fire_rates(rate):
    fired = RNG.random((400, 37)) < rate
    fired[:, 0] = False  # a dead neuron: 0 bits
    fired[:, 1] = True  # one always on: 0 bits
    p = fired.mean(axis=0)
    expected = np.mean([scipy_entropy([q, 1 - q], base=2) for q in p])
    assert est.neuron_entropy(fired) == pytest.approx(expected, abs=1e-12)


def test_pattern_ids_name_equal_rows_alike():
    fired = RNG.random((300, 11)) < 0.2  # few units: many repeated patterns
    ids = est.pattern_ids(fired)
    by_row = {}
    expected = np.array([by_row.setdefault(row.tobytes(), len(by_row)) for row in fired])
    # the same partition of the samples, whatever the numbering
    assert len(set(zip(ids, expected))) == len(set(ids)) == len(set(expected))


def test_entropy_and_mutual_information_match_scipy_and_scikit_learn():
    fired = RNG.random((500, 6)) < 0.4
    labels = RNG.integers(0, 10, 500)
    fired[:, 0] = labels % 2 == 0  # the patterns carry some information about the labels
    ids = est.pattern_ids(fired)
    assert est.entropy(ids) == pytest.approx(scipy_entropy(np.unique(ids, return_counts=True)[1], base=2), abs=1e-12)
    assert est.mutual_information(ids, labels) == pytest.approx(bits(mutual_info_score(ids, labels)), abs=1e-12)
    assert 0 < est.mutual_information(ids, labels) <= est.entropy(labels)


def test_a_constant_layer_has_zero_entropy_and_tells_nothing_about_the_labels():
    labels = RNG.integers(0, 10, 256)
    for value in (False, True):
        fired = np.full((256, 40), value)
        ids = est.pattern_ids(fired)
        assert est.neuron_entropy(fired) == 0.0
        assert est.entropy(ids) == 0.0
        assert est.mutual_information(ids, labels) == 0.0


def test_a_layer_that_copies_the_labels_has_all_their_information():
    labels = RNG.integers(0, 10, 1000)
    one_hot = np.eye(10, dtype=bool)[labels]
    ids = est.pattern_ids(one_hot)
    h_y = scipy_entropy(np.bincount(labels), base=2)
    assert est.entropy(ids) == pytest.approx(h_y, abs=1e-12)
    assert est.mutual_information(ids, labels) == pytest.approx(h_y, abs=1e-12)


def test_pair_samples_are_distinct_and_fixed_by_their_seed():
    pairs = est.sample_pairs(120, 84, 1024, np.random.default_rng(3))
    assert pairs.shape == (1024, 2) and len({tuple(p) for p in pairs}) == 1024
    assert pairs[:, 0].max() < 120 and pairs[:, 1].max() < 84
    assert np.array_equal(pairs, est.sample_pairs(120, 84, 1024, np.random.default_rng(3)))
    every = est.sample_pairs(84, 10, 1024, np.random.default_rng(3))  # 840 pairs: all of them
    assert sorted(map(tuple, every)) == [(i, j) for i in range(84) for j in range(10)]


def test_mean_te_is_the_engines_mean_over_the_pairs():
    source = RNG.random((300, 20)) < 0.5
    target = source[:, :5] ^ (RNG.random((300, 5)) < 0.1)  # coupled at delay 0
    pairs = est.sample_pairs(20, 5, 50, np.random.default_rng(0))
    by_pair = [engine.transfer_entropy(source[:, i], target[:, j], delay=0) for i, j in pairs]
    assert est.mean_te(source, target, pairs) == pytest.approx(np.mean(by_pair), abs=1e-12)
    coupled = np.array([[j, j] for j in range(5)])
    assert est.mean_te(source, target, coupled) > 0.3 > est.mean_te(source, target, coupled + [5, 0])


# ---------------------------------------------------------------- the probe on a real model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


BASE = RunSpec(dataset="digits", seed=3, epochs=2, lr=0.05, batch_size=32)


def test_the_probes_measures_are_those_of_the_layers_recomputed_by_hand(digits):
    """After an epoch, every layer is recomputed from the model's modules on the probe set, binarized
    (> 0 after ReLU, argmax for the class layer) and measured with scipy, scikit-learn and the TE
    engine called directly: the recorded measures agree."""
    training = train(BASE, digits, observe=300)
    result = next(iter(training))
    probe, model = training.probe, training.model
    model.eval()
    with torch.no_grad():
        features = model.features(probe.x)
        fc1 = model.classifier[0](features)
        fc2 = model.classifier[2](torch.relu(fc1))
        logits = model.classifier[4](torch.relu(fc2))
    fired = {
        "conv1": (features > 0).numpy(),
        "fc1": (fc1 > 0).numpy(),
        "fc2": (fc2 > 0).numpy(),
        "class": np.eye(10, dtype=bool)[logits.argmax(1).numpy()],
    }
    labels = digits.y_train.numpy()[np.random.default_rng(BASE.seed).choice(len(digits.x_train), 300, replace=False)]
    assert np.array_equal(probe.labels, labels)
    assert [o.layer for o in result.observed] == ["conv1", "fc1", "fc2", "class"]
    assert [o.neurons for o in result.observed] == [256, 120, 84, 10]
    for o in result.observed:
        f = fired[o.layer]
        _, ids = np.unique(f, axis=0, return_inverse=True)
        assert o.neuron_entropy == pytest.approx(np.mean([scipy_entropy([q, 1 - q], base=2) for q in f.mean(0)]), abs=1e-12)
        assert o.h_t == pytest.approx(scipy_entropy(np.bincount(ids.ravel()), base=2), abs=1e-9)
        assert o.i_ty == pytest.approx(bits(mutual_info_score(ids.ravel(), labels)), abs=1e-9)
    class_layer = result.observed[-1]
    predictions = logits.argmax(1).numpy()
    assert class_layer.i_ty == pytest.approx(bits(mutual_info_score(predictions, labels)), abs=1e-9)

    def te(source, target):
        pairs = probe.pairs[source, target]
        return engine.transfer_entropy_pairs(fired[source].T.copy(), fired[target].T.copy(), pairs, delay=0).mean()

    fc1_row, fc2_row = result.observed[1], result.observed[2]
    assert fc1_row.te_next == pytest.approx(te("fc1", "fc2"), abs=1e-12)
    assert fc1_row.te_class == pytest.approx(te("fc1", "class"), abs=1e-12)
    assert fc2_row.te_next == fc2_row.te_class == pytest.approx(te("fc2", "class"), abs=1e-12)
    assert len(probe.pairs["fc1", "fc2"]) == TE_PAIRS and len(probe.pairs["fc2", "class"]) == 840
    assert result.observed[0].te_next is None and class_layer.te_class is None
    assert result.observe_seconds > 0


def metrics(results):
    return [(r.train_loss, r.train_acc, r.test_loss, r.test_acc, r.te_mean, r.te_max, r.factor_dev_max) for r in results]


@pytest.mark.parametrize(
    "spec",
    [
        BASE,
        replace(BASE, te=TEConfig(window=128, refresh=4, lam=2.0, threshold_out=0.1, reach="backprop")),
        replace(BASE, model="cnn-wide"),  # batch norm: its running statistics must not see the probe
    ],
    ids=["baseline", "te-backprop", "cnn-wide"],
)
def test_observing_changes_no_metric_and_no_weight(digits, spec):
    observed, plain = train(spec, digits, observe=DEFAULT_PROBE), train(spec, digits)
    observed_results = list(observed)
    assert metrics(observed_results) == metrics(plain)
    assert all(len(r.observed) == len(observed.probe.layers) for r in observed_results)
    for (name, a), b in zip(observed.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert observed.model.training


# ---------------------------------------------------------------- recorded runs


TIMINGS = {"id", "run_id", "seconds", "cpu_seconds", "te_seconds", "observe_seconds", "recorded_at"}


def _epochs(db, run_id):
    with Session(open_database(db)) as session:
        rows = session.scalars(select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch)).all()
        return [{c: getattr(row, c) for c in Epoch.__table__.columns.keys() if c not in TIMINGS} for row in rows]


def test_a_resumed_observed_run_observes_as_the_straight_one():
    """The probe is drawn from the run's seed, not from state: a Training resumed from a
    checkpoint observes its later epochs exactly as the uninterrupted one does."""
    data = load_dataset("digits")
    spec = RunSpec(dataset="digits", seed=2, epochs=3, lr=0.05, te=TEConfig(window=128, refresh=4))
    straight = [r.observed for r in train(spec, data, observe=64)]
    first = train(spec, data, observe=64)
    done = [next(iter(first)).observed]
    second = train(spec, data, observe=64)
    second.load_state_dict(loads(dumps(first.state_dict())))
    assert [*done, *(r.observed for r in second)] == straight and len(straight) == 3


@pytest.mark.parametrize("te", [False, True], ids=["baseline", "te"])
def test_an_observed_run_records_its_layers_and_trains_as_the_unobserved_one(tmp_path, te):
    db = tmp_path / "o.db"
    args = ["run", "--dataset", "digits", "--epochs", "2", "--lr", "0.05", "--seed", "4", "--db", db, *(["--te"] if te else [])]
    observed = invoke(*args, "--observe")
    assert observed.exit_code == 0, observed.output
    assert f"observing a probe of {DEFAULT_PROBE} training samples" in observed.output and "observed in" in observed.output
    plain = invoke(*args)
    assert plain.exit_code == 0, plain.output
    with Session(open_database(db)) as session:
        runs = session.scalars(select(Run).order_by(Run.id)).all()
        assert [run.observe for run in runs] == [DEFAULT_PROBE, None]
        assert [a.observe for run in runs for a in run.attempts] == [DEFAULT_PROBE, None]
        assert runs[0].run_key == runs[1].run_key and runs[0].config == runs[1].config
        rows = session.execute(
            select(Observation.run_id, Observation.epoch, Observation.layer).order_by(Observation.id)
        ).all()
        assert rows == [(runs[0].id, e, layer) for e in (1, 2) for layer in ("conv1", "fc1", "fc2", "class")]
        seconds = session.scalars(select(Epoch.observe_seconds).order_by(Epoch.run_id, Epoch.epoch)).all()
        assert all(s > 0 for s in seconds[:2]) and seconds[2:] == [None, None]
    assert _epochs(db, runs[0].id) == _epochs(db, runs[1].id)  # bit for bit: floats compared exactly
    shown = json.loads(invoke("runs", "show", runs[0].id, "--db", db, "--format", "json").output)
    assert shown["observe"] == DEFAULT_PROBE and [a["observe"] for a in shown["attempts"]] == [DEFAULT_PROBE]
    assert [e["observe_seconds"] > 0 for e in shown["epochs"]] == [True, True]
    assert "observe" in invoke("runs", "show", runs[0].id, "--db", db).output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--probe", "64"], "--probe needs --observe"),
        (["--observe", "--probe", "1"], "--probe: expected an integer >= 2 (probe samples), got 1"),
        (["--observe", "--probe", "5000"], "a probe of 5000 samples is larger than digits's training set (1437 samples)"),
    ],
)
def test_probe_mistakes_are_one_line_and_write_nothing(tmp_path, args, message):
    db = tmp_path / "never.db"
    result = invoke("run", "--dataset", "digits", "--epochs", "1", "--db", db, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert not db.exists()


# ---------------------------------------------------------------- sweeps


def test_observe_in_a_sweep_file_is_read_and_leaves_run_keys_alone(tmp_path):
    plain = parse_sweep(TINY.format(epochs=2, extra=""), tmp_path / "t.toml")
    assert plain.observe is None
    for value, size in (("true", DEFAULT_PROBE), ("100", 100), ("false", None)):
        spec = parse_sweep(f"observe = {value}\n" + TINY.format(epochs=2, extra=""), tmp_path / "t.toml")
        assert spec.observe == size
        assert [run.run_key() for run in spec.runs] == [run.run_key() for run in plain.runs]
    assert parse_sweep(TINY.format(epochs=2, extra=""), tmp_path / "t.toml", ["observe=64"]).observe == 64
    with pytest.raises(Exception, match=r"observe \(line 1\): expected true, false or a probe size >= 2, got 1"):
        parse_sweep("observe = 1\n" + TINY.format(epochs=2, extra=""), tmp_path / "t.toml")


def test_a_sweep_observes_its_runs(tmp_path):
    """In a process of its own: this one has trained with torch's threads, and a sweep forks its workers."""
    sweep_file = tmp_path / "observed.toml"
    sweep_file.write_text("observe = 64\n" + TINY.format(epochs=1, extra="").replace("seeds = [0, 1]", "seeds = [0]"))
    db = tmp_path / "s.db"
    done = subprocess.run([sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--db", str(db)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    with Session(open_database(db)) as session:
        assert sorted(session.scalars(select(Run.observe))) == [64, 64]
        counted = session.execute(select(Observation.run_id, Observation.layer)).all()
        assert len(counted) == 2 * 4
