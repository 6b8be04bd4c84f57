"""The straightforward RCF online step: the oracle of the fast path (:meth:`avis.models.rcf.RCF.step`).

Float32, every frame's audio features through the full LSTM, no caches beyond the reference features: what
the paper describes, written plainly. ``tests/test_perf.py`` checks the fast path against it and
``scripts/bench_online.py`` times both.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def reference_step(model, state, frame: torch.Tensor, audio: torch.Tensor | None = None) -> None:
    """``model.step(state, frame, audio)`` the straightforward way (same state, same outputs)."""
    feats = model.backbone(model.normalize(frame[None]))
    f_t = feats[-1]
    state.size = tuple(frame.shape[-2:])
    f_ref = model._cached_references(state, f_t)
    aud = a_t = None
    if model.uses_audio and audio is not None:
        tokens = model.fusion.audio_tokens
        a_t = tokens.frame_features(audio.to(f_t.device, torch.float32)[None])[0]
        if not state.audio:
            state.audio.extend([a_t] * model.delta)
        # A window missing from an earlier frame reads as silence (as the data pipeline zero-pads).
        past = [tokens.frame_features(torch.zeros_like(audio, dtype=torch.float32, device=f_t.device)[None])[0]
                if a is None else a for a in state.audio]
        aud = torch.stack(past + [a_t])[None]
    logits, masks = model.predict(f_t, f_ref, feats[:-1], audio_features=aud)
    state.probs.append(logits[-1, 0].softmax(-1))
    state.masks.append(masks[-1, 0])
    if model.delta:
        state.features.append(f_t)
        state.audio.append(a_t)


@torch.no_grad()
def reference_video(model, frames, audio):
    """The reference step over a whole video -> (state, tracks)."""
    state = model.init_state()
    for f, a in zip(frames, audio):
        reference_step(model, state, f, a)
    return state, model.finish(state)
