"""The audio pretraining stage the trainer runs before training a model with audio (``audio.pretrain``).

:class:`avis.engine.loop.Trainer` calls :func:`run_audio_pretraining` after building the model and before
building the optimizer: rank 0 pretrains the audio encoder's log-mel network on the training shards'
per-frame tags (:mod:`avis.models.audio.pretrain`) and saves it as ``RUN/audio_pretrain.pt`` with
``RUN/audio_pretrain.json`` (the settings and what it reached); every rank then loads it and, with
``audio.pretrain.freeze``, freezes the network for the RCF training (the bi-LSTM, the token head and the
tagging head still learn). A run folder that already holds the weights of the same settings (a resumed run,
a rerun) reuses them instead of pretraining again.

Settings (``configs/audio/tiny.yaml``, ``vggish.yaml``; ``configs/audio/none.yaml`` has none)::

    audio.pretrain.steps        optimisation steps (0: no pretraining stage)
    audio.pretrain.batch_size   windows per step
    audio.pretrain.lr           AdamW learning rate
    audio.pretrain.max_windows  at most this many frames' windows (a uniform sample of the training frames)
    audio.pretrain.freeze       freeze the pretrained log-mel network during RCF training
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from avis.engine import dist as D
from avis.errors import ConfigError

log = logging.getLogger("avis.train")

WEIGHTS = "audio_pretrain.pt"
RECORD = "audio_pretrain.json"


def settings_of(cfg: DictConfig) -> dict | None:
    """``audio.pretrain`` as plain values, or None when there is no pretraining stage (absent or 0 steps)."""
    pc = OmegaConf.select(cfg, "audio.pretrain", default=None)
    if pc is None:
        return None
    pc = OmegaConf.to_container(pc, resolve=True) if isinstance(pc, DictConfig) else dict(pc)
    steps = int(pc.get("steps") or 0)
    if steps <= 0:
        return None
    s = {"steps": steps, "batch_size": int(pc.get("batch_size", 64)), "lr": float(pc.get("lr", 1e-2)),
         "max_windows": int(pc.get("max_windows", 10000)), "freeze": bool(pc.get("freeze", True)),
         "seed": int(cfg.get("seed", 0)), "eta": float(OmegaConf.select(cfg, "data.eta", default=0.96))}
    if s["batch_size"] < 1 or s["max_windows"] < 1 or not s["lr"] > 0:
        raise ConfigError(f"audio.pretrain: batch_size and max_windows must be >= 1 and lr > 0, got {pc}")
    return s


def audio_network(model: torch.nn.Module):
    """The model's audio encoder and its log-mel network (``encoder.extractor.backbone``), or (None, None)
    for a model without audio."""
    encoder = getattr(model, "audio_encoder", None)
    extractor = getattr(encoder, "extractor", None)
    if encoder is None or extractor is None:
        return encoder, None
    return encoder, extractor.backbone


def run_audio_pretraining(cfg: DictConfig, model: torch.nn.Module, source, out_dir: Path, info,
                          progress: bool = True) -> dict | None:
    """The stage (see the module); returns the record (``audio_pretrain.json``'s content) or None when the
    config has no pretraining or the model no audio."""
    settings = settings_of(cfg)
    encoder, net = audio_network(model)
    if settings is None or encoder is None:
        return None
    if net is None:
        raise ConfigError(f"audio.pretrain.steps={settings['steps']}: the audio encoder "
                          f"{type(encoder).__name__} has no log-mel network to pretrain (set audio.pretrain.steps=0)")
    out_dir = Path(out_dir)
    weights, record_path = out_dir / WEIGHTS, out_dir / RECORD
    record = None
    if info.is_main:
        record = _reusable(weights, record_path, settings)
        if record is not None:
            log.info("audio pretraining: reusing %s (%d steps, presence accuracy %.3f)", weights, settings["steps"],
                     record["accuracy"])
        else:
            record = _pretrain(encoder, net, source, settings, weights, record_path, info.device, progress)
    D.barrier(info)
    state = torch.load(weights, map_location=info.device, weights_only=True)
    net.load_state_dict(state)
    if settings["freeze"]:
        encoder.extractor.trainable = False
        net.requires_grad_(False)
        net.eval()
    return record


def _reusable(weights: Path, record_path: Path, settings: dict) -> dict | None:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not weights.is_file() or not isinstance(record, dict) or record.get("settings") != settings:
        return None
    return record


def _pretrain(encoder, net, source, settings: dict, weights: Path, record_path: Path, device, progress) -> dict:
    from tqdm import tqdm

    from avis.io.atomic import atomic_open, atomic_write_json
    from avis.models.audio.pretrain import collect_examples, pretrain_network

    t0 = time.perf_counter()
    log.info("audio pretraining: the log-mel network on the training data's per-frame tags (%d steps) ...",
             settings["steps"])
    with tqdm(desc="audio windows", unit="video", disable=not progress, dynamic_ncols=True) as bar:
        data = collect_examples(source, encoder.extractor.frontend, settings["eta"], settings["max_windows"],
                                settings["seed"], progress=bar)
    if not len(data["examples"]):
        raise ConfigError("audio.pretrain: no training video has sound; set audio.pretrain.steps=0 (or train "
                          "the visual-only recipe, audio=none)")
    stats = pretrain_network(net, int(encoder.extractor.feature_dim), data, settings["steps"], settings["batch_size"],
                             settings["lr"], seed=settings["seed"], device=device, progress=progress)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(weights, "wb") as f:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, f)
    record = {"settings": settings, "videos": data["videos"], "frames": data["frames"],
              "windows": int(len(data["examples"])), "presence_rate": float(data["presence"].mean()),
              "sounding_known": float(data["known"].float().mean()), **stats,
              "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_json(record, record_path)  # after the weights: a record always names weights that exist
    log.info("audio pretraining: %d windows of %d videos (sounding flags on %.0f %%), BCE %.3f, presence accuracy "
             "%.3f (majority label %.3f), %.1f s -> %s", record["windows"], record["videos"],
             100 * record["sounding_known"], record["loss"], record["accuracy"], record["baseline"],
             record["seconds"], weights)
    return record
