"""Hostile checkpoint configs and layouts against ``avis eval`` / ``avis infer``: code named in the config
(class 1), configs that exhaust memory (class 2), a checkpoint's own layout (class 5)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from avis.engine import safe_config
from tests.conftest import REPO, TOY
from tests.hostile import checkpoints as C
from tests.hostile.conftest import call, error_line


@pytest.fixture(scope="module")
def good_state(toy_checkpoint) -> dict:
    return torch.load(toy_checkpoint, weights_only=True)


def _write(state: dict, cfg, path: Path, marker: Path | None = None) -> Path:
    """``state`` with ``cfg`` (a dict, YAML text, or a whole checkpoint dict) as its config, saved at ``path``."""
    if isinstance(cfg, dict) and "format" in cfg:
        state = cfg
    else:
        text = cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False)
        state = {**state, "config": text.replace(C.MARKER, str(marker))}
    torch.save(state, path)
    return path


def _argv(command, ckpt, built, media, out) -> list:
    if command == "eval":  # no --shards: the checkpoint's own data.val would be built too
        return ["eval", "--checkpoint", ckpt, "--out", out]
    return ["infer", media["good"], "--checkpoint", ckpt, "--out", out, "--no-overlay"]


def _refused(command, ckpt, what, built, media, tmp_path, capsys, marker=None) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text("earlier output\n")
    rc, _, err = call(capsys, *_argv(command, ckpt, built, media, out))
    line = error_line(rc, err, command, ckpt, what)
    assert rc == 2
    if marker is not None:
        assert not marker.exists(), "the checkpoint ran code"
    assert (out / "results.json").read_text() == "earlier output\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    return line


# ------------------------------------------------------------------------------------------------ class 1

@pytest.fixture(scope="module")
def code_corpus(good_state, tmp_path_factory):
    root = tmp_path_factory.mktemp("code_ckpts")
    good = yaml.safe_load(good_state["config"])
    out = {}
    for name, (cfg, what) in C.code_cases(good).items():
        marker = root / f"marker_{name}"
        out[name] = (_write(good_state, cfg, root / f"{name}.pt", marker), marker, what)
    return out


@pytest.fixture
def marker_resolver(tmp_path):
    """A custom OmegaConf resolver that writes a marker if it is ever called."""
    marker = tmp_path / "resolver_marker"
    OmegaConf.register_new_resolver("avis_hostile_marker", lambda: marker.write_text("called") and 0.1, replace=True)
    yield marker
    OmegaConf.clear_resolver("avis_hostile_marker")


CODE_CASES = list(C.code_cases({"data": {}, "model": {}}))


@pytest.mark.parametrize("command", ["eval", "infer"])
@pytest.mark.parametrize("case", CODE_CASES)
def test_config_naming_code(case, command, code_corpus, built, media, tmp_path, capsys, marker_resolver):
    ckpt, marker, what = code_corpus[case]
    line = _refused(command, ckpt, what, built, media, tmp_path, capsys, marker)
    assert not marker_resolver.exists()
    assert "\x1b" not in line and "\u200b" not in line


def test_every_shipped_target_is_allowed_and_exists():
    """The allowlist covers every ``_target_`` of configs/ (and the demo's), and each name resolves to a
    callable: a renamed builder must be renamed here too."""
    from hydra._internal.utils import _locate

    shipped = set()
    for p in (REPO / "configs").rglob("*.yaml"):
        for line in p.read_text().splitlines():
            if line.strip().startswith("_target_:"):
                shipped.add(line.split(":", 1)[1].split("#")[0].strip())
    assert shipped and shipped <= safe_config.ALLOWED_TARGETS, shipped - safe_config.ALLOWED_TARGETS
    for name in safe_config.ALLOWED_TARGETS:
        assert callable(_locate(name)), name


def test_allowlist_is_exact_not_a_prefix(monkeypatch):
    good = {"model": {"_target_": "avis.models.rcf.rcf_tiny"}}
    safe_config.check(good)
    for t in ("avis.models.rcf", "avis.models.rcf.rcf_tiny.mro", "avis.models.rcf.nn.Module", "torch.optim.SGD.step"):
        with pytest.raises(safe_config.Refused, match="not one of the builders"):
            safe_config.check({"model": {"_target_": t}})
    monkeypatch.setenv(safe_config.TRUSTED_TARGETS_ENV, "mypkg.build_model, other.fn")
    safe_config.check({"model": {"_target_": "mypkg.build_model"}})  # the user's own builders, by exact name


def test_user_overrides_stay_flexible(toy_checkpoint, built, tmp_path, capsys):
    """Overrides typed by the user may interpolate; the merged config is resolved before it is built."""
    from avis.engine.session import load_trained

    loaded = load_trained(toy_checkpoint, "cpu", ["data.test_size=${data.max_size}", "model.dropout=0.2"])
    assert loaded.cfg.data.test_size == 64 and loaded.cfg.model.dropout == 0.2
    assert "${" not in OmegaConf.to_yaml(loaded.cfg)
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", built, "--out", tmp_path / "o",
                      "data.test_size=${oops")
    error_line(rc, err, "eval", None, r"bad override")
    # the user may name a builder of their own; the checkpoint may not
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", built, "--out", tmp_path / "o",
                      "model._target_=pathlib.Path.cwd")
    line = error_line(rc, err, "eval", toy_checkpoint, r"does not build a model|not a model")
    assert "not one of the builders" not in line


def test_override_cannot_decode_what_the_checkpoint_hid(good_state, tmp_path, capsys, built):
    """A checkpoint string holding a config, decoded by an override's resolver, is checked like the rest."""
    good = yaml.safe_load(good_state["config"])
    marker = tmp_path / "marker"
    good["note"] = f"{{_target_: os.system, _args_: ['touch {marker}']}}"
    ckpt = _write(good_state, good, tmp_path / "hid.pt")
    rc, _, err = call(capsys, "eval", "--checkpoint", ckpt, "--shards", built, "--out", tmp_path / "o",
                      "model.extra=${oc.decode:${note}}")
    error_line(rc, err, "eval", None, r"not one of the builders avis registers")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ class 2

MEMORY_CHILD = r"""
import json, resource, sys
import torch, avis.cli, avis.engine.session, avis.engine.evaluate, avis.engine.infer, hydra.utils, av  # the footprint

def vm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) << 10

base = vm()
cap = base + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
for argv in json.loads(sys.argv[1]):
    rc = avis.cli.main(argv)
    print(json.dumps({"argv": argv, "rc": rc}), flush=True)
print(json.dumps({"base": base, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10}), flush=True)
"""


def test_configs_exhausting_memory(good_state, built, media, tmp_path):
    """Every case, through ``avis eval`` and ``avis infer``, in one process whose address space may grow by at
    most 2 GiB beyond the toolkit's own footprint (torch alone maps about 3 GiB): a clean line each, the
    earlier output kept, and a bounded time per case (a hang guard, generous for a loaded machine)."""
    good = yaml.safe_load(good_state["config"])
    cases = dict(C.memory_cases(good))
    cases["rcf-layer-bomb"] = C.rcf_layer_bomb()
    argvs, expect = [], []
    cases["deflated-config"] = (None, C.DEFLATED)
    for name, (cfg, what) in cases.items():
        ckpt = (C.deflated_checkpoint(good_state, tmp_path / f"{name}.pt") if cfg is None else
                _write(good_state, cfg, tmp_path / f"{name}.pt"))
        for command in ("eval", "infer"):
            out = tmp_path / "out" / f"{name}-{command}"
            out.mkdir(parents=True)
            (out / "results.json").write_text("earlier output\n")
            argvs.append([str(a) for a in _argv(command, ckpt, built, media, out)])
            expect.append((name, command, ckpt, what, out))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(argvs)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == len(argvs) + 1, p.stdout + p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ": error: " in ln or "internal error" in ln]
    assert "Traceback" not in p.stderr
    for (name, command, ckpt, what, out), row, line in zip(expect, rows, errors, strict=False):
        assert row["rc"] == 2, (name, command, line)
        assert line.startswith(f"avis {command}: error: {ckpt}: "), (name, line)
        assert re.search(what, line), (name, line)
        assert (out / "results.json").read_text() == "earlier output\n"
    assert len(errors) == len(argvs), errors
    assert rows[-1]["maxrss"] < rows[-1]["base"] + (2 << 30)


# ------------------------------------------------------------------------------------------------ class 5

LAYOUT_CASES = ["categories-a-string", "categories-a-mapping", "category-without-name", "category-id-a-string",
                "category-id-twice", "step-a-string", "step-negative", "step-a-float", "step-a-bool", "no-step",
                "no-config", "config-not-text", "model-a-list", "model-entry-not-a-tensor", "no-model",
                "world-size-zero", "data-positions-wrong", "wrong-shapes"]


@pytest.fixture(scope="module")
def layout_corpus(good_state, tmp_path_factory):
    root = tmp_path_factory.mktemp("layout_ckpts")
    cases = C.layout_cases(good_state)
    assert sorted(cases) == sorted(LAYOUT_CASES)
    return {name: (_write(good_state, st, root / f"{name}.pt"), what) for name, (st, what) in cases.items()}


@pytest.mark.parametrize("command", ["eval", "infer"])
@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_checkpoint_layout(case, command, layout_corpus, built, media, tmp_path, capsys):
    ckpt, what = layout_corpus[case]
    _refused(command, ckpt, what, built, media, tmp_path, capsys)


def test_resume_from_a_bad_layout(layout_corpus, tmp_path, capsys):
    ckpt, what = layout_corpus["step-a-string"]
    rc, _, err = call(capsys, "train", "experiment=toy_av", TOY, f"hydra.run.dir={tmp_path / 'r'}",
                      f"trainer.resume={ckpt}", "trainer.progress=false", "trainer.tensorboard=false")
    error_line(rc, err, "train", ckpt, what)


def test_weight_files_named_by_the_config_are_not_read(tmp_path):
    """A checkpoint trained with pretrained weights at some path: evaluating it reads no such file (its own
    weights replace them), so a path missing here still loads and a FIFO there is never opened."""
    from avis.engine.session import load_trained

    state, _ = C.rcf_layer_bomb()
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    for path in (fifo, "/nonexistent/resnet50.pth"):
        cfg = yaml.safe_load(state["config"])
        cfg["model"] = {"_target_": "avis.models.rcf.rcf_tiny", "num_classes": 2, "backbone_weights": str(path)}
        torch.save({**state, "config": yaml.safe_dump(cfg)}, tmp_path / "c.pt")
        loaded = load_trained(tmp_path / "c.pt", "cpu")  # a read of the FIFO would block here
        assert loaded.cfg.model.backbone_weights is None


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")))
def test_shipped_configs_pass_the_checks(experiment):
    """What training saves in a checkpoint (the resolved config) is accepted for every shipped experiment, and
    its data section is within the limits."""
    from avis.engine.config import compose
    from avis.engine.session import data_problem

    cfg = compose([f"experiment={experiment}", "data.num_classes=3"], out_dir="runs/x")
    data = safe_config.parse(OmegaConf.to_yaml(cfg, resolve=True))
    assert data_problem(data["data"]) is None
    assert safe_config.with_overrides(data).model._target_ in safe_config.ALLOWED_TARGETS
