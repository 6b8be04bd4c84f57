"""Mutation check of the method-specific parts: patch each part out of a copy of the checkout and run the fast
test that must then fail. Prints the table of docs/mutation.md.

    python scripts/mutation_check.py [--only SUBSTRING ...]

Each mutation replaces one exact piece of code (which must occur once) in a temporary copy of the tracked and
untracked-but-not-ignored files, runs its tests there (``pytest -x``, one thread), and restores the file. The
tests are first run once unmutated: they must pass. A mutation "survives" when its tests still pass; the
script exits non-zero if any does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    method: str
    part: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


R, CV, ST, IP, EV = "tests/test_rcf.py::", "tests/test_crossvis.py::", "tests/test_stmask.py::", \
    "tests/test_inspro.py::", "tests/test_efficientvis.py::"
SH = "tests/test_models_shared.py::"

MUTATIONS = [
    # -- RCF ---------------------------------------------------------------------------------------------------
    Mutation("RCF", "soundless video: audio tokens masked in inference as in training",
             "avis/engine/predict.py",
             "audio = frame_windows(wave, times, SAMPLE_RATE, eta) if has_audio else None",
             "audio = frame_windows(wave if has_audio else torch.zeros(0), times, SAMPLE_RATE, eta)",
             (R + "test_soundless_video_is_masked_in_inference_as_in_training",)),
    Mutation("RCF", "audio tokens masked for clips without sound (training)", "avis/models/rcf/fusion.py",
             "masks.append((~valid)[:, None].expand(b, n_aud) if valid.dim() == 1 else ~valid)",
             "masks.append(torch.zeros(b, n_aud, dtype=torch.bool, device=device))",
             (R + "test_audio_changes_output_only_where_present",)),
    Mutation("RCF", "lr multiplier on the visual backbone only", "avis/engine/optim.py",
             'is_bb = any(name.startswith(prefix + ".") for prefix in backbone_prefixes)',
             'is_bb = any(part.startswith(tuple(backbone_prefixes)) for part in name.split("."))',
             (R + "test_backbone_lr_multiplier_selects_the_visual_backbone_only",)),
    Mutation("RCF", "padding: key-padding mask of the target tokens", "avis/models/rcf/fusion.py",
             "masks = [tgt_pad]", "masks = [torch.zeros_like(tgt_pad)]",
             (R + "test_fusion_over_a_padded_grid_equals_the_unpadded_one",)),
    Mutation("RCF", "padding: sine encoding over the valid region", "avis/models/rcf/fusion.py",
             "pos = [valid_position_encoding(h, w, self.dim, valid_hw.to(device), dtype)]",
             "pos = [self.positions(h, w, self.dim, device, dtype).expand(b, -1, -1)]",
             (R + "test_fusion_over_a_padded_grid_equals_the_unpadded_one",)),
    Mutation("RCF", "padding: reference tokens pooled over the valid region", "avis/models/rcf/fusion.py",
             "ref, wmap = self.reference_tokens(f_ref, valid_hw if padded else None)",
             "ref, wmap = self.reference_tokens(f_ref)",
             (R + "test_fusion_over_a_padded_grid_equals_the_unpadded_one",)),
    Mutation("RCF", "padding: padded pixels zeroed (as the convolutions' zero padding)", "avis/models/rcf/model.py",
             "x = _zero_padding(x, sizes.repeat_interleave(t, 0))", "x = x",
             (R + "test_batch_padding_reaches_the_model_and_its_content_does_not_matter",)),
    Mutation("RCF", "padding: the pipeline tells each clip's size (image_sizes)", "avis/data/clips.py",
             '"image_sizes": torch.tensor(sizes, dtype=torch.int64),', "",
             (R + "test_batch_padding_reaches_the_model_and_its_content_does_not_matter",)),
    Mutation("RCF", "reference weight map W = sigmoid(conv(f_ref))", "avis/models/rcf/fusion.py",
             "w = torch.sigmoid(self.weight(f_ref))", "w = torch.ones_like(self.weight(f_ref))",
             (R + "test_reference_weight_map_and_pooling",)),
    Mutation("RCF", "online cache: first frame repeated as its own reference", "avis/models/rcf/model.py",
             "state.features.extend([f_t] * self.delta)", "state.features.extend([f_t * 0] * self.delta)",
             (R + "test_online_step_equals_clip_computation",)),
    Mutation("RCF", "matching similarity Dice + class probability (Eq. 3): Dice part",
             "avis/models/rcf/criterion.py",
             "sim = sim + probs[b][:, labels].float()", "sim = probs[b][:, labels].float()",
             (R + "test_matcher_uses_the_masks_dice_when_classes_tie",)),
    Mutation("RCF", "no-object class weight 0.1", "avis/models/rcf/criterion.py",
             "empty[-1] = no_object_weight", "empty[-1] = 1.0", (R + "test_no_object_weight",)),
    Mutation("RCF", "identity rule: IoU > 0.5 rescue against t-1", "avis/tracking/slots.py",
             "pairs = torch.nonzero(iou > self.iou_threshold).tolist()", "pairs = []",
             ("tests/test_tracking.py::test_swapped_slots_with_high_iou_keep_ids",)),
    Mutation("RCF", "per frame: step returns the frame's tracked instances", "avis/models/rcf/model.py",
             "for slot, tid in assigned.items()), key=lambda inst: inst.track_id))",
             "for slot, tid in []), key=lambda inst: inst.track_id))",
             (SH + "test_step_returns_the_frames_tracked_instances_that_make_the_tracks[rcf_tiny]",)),
    # -- CrossVIS ----------------------------------------------------------------------------------------------
    Mutation("CrossVIS", "crossover: filters applied to the other frame", "avis/models/crossvis/model.py",
             "partner=lambda n: n ^ 1", "partner=lambda n: n",
             (CV + "test_crossover_uses_other_frames_features_and_coordinates",)),
    Mutation("CrossVIS", "partner frame within a window of 20, never itself", "avis/models/crossvis/model.py",
             "self.clip_sampler = FramePair(partner_distance)", "self.clip_sampler = None",
             (CV + "test_training_pairs_a_frame_with_a_partner_within_the_window_never_itself",)),
    Mutation("CrossVIS", "global balanced embedding: scale s = sqrt(2) ln(N - 1)", "avis/models/crossvis/losses.py",
             "self.scale = embedding_scale(num_identities)", "self.scale = 1.0",
             (CV + "test_global_embedding_loss_scale_and_normalisation",)),
    Mutation("CrossVIS", "association: same class only", "avis/models/crossvis/association.py",
             "return torch.where(det_labels[:, None] == trk_labels[None, :], s, torch.full_like(s, -1.0))",
             "return s", (CV + "test_association_rule",)),
    Mutation("CrossVIS", "FCOS centre sampling", "avis/models/crossvis/targets.py",
             "    if center_radius:", "    if False:", (CV + "test_fcos_centre_sampling_radius",)),
    Mutation("CrossVIS", "per frame: step returns the frame's tracked instances", "avis/models/crossvis/model.py",
             "for i, j in enumerate(joined) if j != DROPPED)", "for i, j in enumerate(joined) if False)",
             (SH + "test_step_returns_the_frames_tracked_instances_that_make_the_tracks[crossvis_tiny]",)),
    # -- STMask ------------------------------------------------------------------------------------------------
    Mutation("STMask", "temporal fusion: box target at t (deltas w.r.t. the t-1 box)", "avis/models/stmask/model.py",
             'next_boxes.append(t1["boxes"][g1])', 'next_boxes.append(t0["boxes"][g0])',
             (ST + "test_temporal_fusion_loss_targets_by_hand",)),
    Mutation("STMask", "temporal fusion: mask target at t", "avis/models/stmask/model.py",
             "next_img.append(a + 1)", "next_img.append(a)", (ST + "test_temporal_fusion_loss_targets_by_hand",)),
    Mutation("STMask", "temporal fusion: shift of the t-1 box and coefficients", "avis/models/stmask/temporal.py",
             "return decode(deltas.float(), torch.cat(boxes).float()), coefs.float() + shift.float()",
             "return torch.cat(boxes).float(), coefs.float()",
             (ST + "test_temporal_fusion_shifts_a_known_box",)),
    Mutation("STMask", "tracking loss: target 1 for the same instance only", "avis/models/stmask/model.py",
             "(i0[:, None] == i1[None]).float()", "torch.ones(len(i0), len(i1))",
             (ST + "test_tracking_loss_targets_by_hand",)),
    Mutation("STMask", "correlation over displacements", "avis/models/stmask/temporal.py",
             "(f1 * f2p[:, :, dy:dy + h, dx:dx + w]).mean(1)", "(f1 * f2p[:, :, r:r + h, r:r + w]).mean(1)",
             (ST + "test_correlation_matches_a_direct_loop",)),
    Mutation("STMask", "FCB: deformable class branch", "avis/models/stmask/head.py",
             'out = {"box": box, "cls": run(self.cls, self.fcb)',
             'out = {"box": box, "cls": F.conv2d(x, self.cls.weight, self.cls.bias, padding=(self.cls.kernel[0] // 2, '
             'self.cls.kernel[1] // 2))',
             (ST + "test_fcb_zero_offsets_reproduce_plain_convolution",)),
    Mutation("STMask", "association: new track when the best score <= 1.4", "avis/models/stmask/association.py",
             "if float(s[j]) > threshold:", "if float(s[j]) >= threshold:",
             (ST + "test_assign_new_track_threshold_and_one_to_one",)),
    Mutation("STMask", "unmatched tracks kept 10 frames", "avis/models/stmask/association.py",
             "if tr.missed > memory:", "if tr.missed > 0:", (ST + "test_tracks_kept_ten_frames_with_decayed_score",)),
    Mutation("STMask", "anchor matching: each gt's best anchor forced positive", "avis/models/stmask/model.py",
             "best_iou[forced] = 2.0", "best_iou[forced] = best_iou[forced]",
             (ST + "test_anchor_matching_thresholds_and_forced_best_anchor",)),
    Mutation("STMask", "per frame: step returns the frame's tracked instances", "avis/models/stmask/model.py",
             "            if t in tr.masks:", "            if False:",
             (SH + "test_step_returns_the_frames_tracked_instances_that_make_the_tracks[stmask_tiny]",)),
    # -- InsPro ------------------------------------------------------------------------------------------------
    Mutation("InsPro", "propagated queries keep their gradients", "avis/models/inspro/model.py",
             "queries = self.intra_query(torch.stack(bank))", "queries = self.intra_query(torch.stack(bank)).detach()",
             (IP + "test_later_frames_losses_reach_frame_0_only_through_the_propagated_queries",)),
    Mutation("InsPro", "propagated object features (bank) keep their gradients", "avis/models/inspro/model.py",
             'bank = (bank + [last["queries"]])[-self.bank_size():]',
             'bank = (bank + [last["queries"].detach()])[-self.bank_size():]',
             (IP + "test_later_frames_losses_reach_frame_0_only_through_the_propagated_queries",)),
    Mutation("InsPro", "box de-duplication loss in the frame losses", "avis/models/inspro/model.py",
             'acc["dedup"] = acc["dedup"] + dedup_loss(boxes, matched, tg["boxes"], self.dedup_k, self.dedup_beta)',
             'acc["dedup"] = acc["dedup"]', (IP + "test_frame_losses_include_the_dedup_loss",)),
    Mutation("InsPro", "temporally consistent matching (not per-frame Hungarian)", "avis/models/inspro/model.py",
             'return temporally_consistent_matching(costs, [tg["ids"] for tg in targets])',
             "from scipy.optimize import linear_sum_assignment as lsa\n"
             "        return [tuple(torch.as_tensor(x, dtype=torch.int64) for x in lsa(c.detach().float().numpy()))\n"
             "                for c in costs]",
             (IP + "test_training_assignment_is_temporally_consistent_not_per_frame",)),
    Mutation("InsPro", "matching: slots of vanished objects stay reserved", "avis/models/inspro/matching.py",
             "free = [s for s in range(n_slots) if s not in used]",
             "free = [s for s in range(n_slots) if s not in slots]",
             (IP + "test_new_object_cannot_take_reserved_slot_even_if_it_is_the_only_cheap_one",)),
    Mutation("InsPro", "intra-query attention: weighted bank + o_t", "avis/models/inspro/head.py",
             "return (w * bank).sum(0) + bank[-1]", "return (w * bank).sum(0)",
             (IP + "test_intra_query_attention_is_the_weighted_sum_plus_current",)),
    Mutation("InsPro", "propagated proposals clipped to the image", "avis/models/inspro/model.py",
             'return queries, clip_to_image(last["boxes"].detach(), image_size), bank',
             'return queries, last["boxes"].detach(), bank',
             (IP + "test_propagated_proposals_are_clipped_to_the_image",)),
    Mutation("InsPro", "feature bank 3 in training, 18 at inference", "avis/models/inspro/model.py",
             "return self.train_bank if self.training else self.test_bank", "return self.train_bank",
             (IP + "test_feature_bank_length_training_vs_inference",)),
    Mutation("InsPro", "per frame: step returns the frame's tracked instances", "avis/models/inspro/model.py",
             'instances.append(TrackedInstance(state["runs"][slot][-1], int(label), float(score), masks[j]))',
             "pass", (SH + "test_step_returns_the_frames_tracked_instances_that_make_the_tracks[inspro_tiny]",)),
    # -- EfficientVIS ------------------------------------------------------------------------------------------
    Mutation("EfficientVIS", "correspondence: clip 2 starts from clip 1's queries (nothing carried)",
             "avis/models/efficientvis/model.py", 'return out["queries"].mean(2)', "return None",
             (EV + "test_clip2_starts_from_clip1s_time_averaged_output_queries_with_gradients",)),
    Mutation("EfficientVIS", "correspondence: gradients through the carried queries",
             "avis/models/efficientvis/model.py", 'return out["queries"].mean(2)',
             'return out["queries"].mean(2).detach()',
             (EV + "test_clip2_starts_from_clip1s_time_averaged_output_queries_with_gradients",)),
    Mutation("EfficientVIS", "correspondence: clip 2 reuses clip 1's assignment", "avis/models/efficientvis/model.py",
             "final = self._assign(outs[-1], targets, first)", "final = self._assign(outs[-1], targets, None)",
             (EV + "test_clip2_reuses_clip1_assignment",)),
    Mutation("EfficientVIS", "clip pair sampled within the video", "avis/models/efficientvis/model.py",
             "self.clip_sampler = ClipPair(self.clip_frames, 2 if correspondence else 1)", "self.clip_sampler = None",
             (EV + "test_training_clip_pair_lies_within_the_video_in_random_order",)),
    Mutation("EfficientVIS", "the two clips in random order", "avis/models/sampling.py",
             "if self.shuffle and k > 1:", "if False:",
             (EV + "test_training_clip_pair_lies_within_the_video_in_random_order",)),
    Mutation("EfficientVIS", "tracklet cost counts empty frames", "avis/models/efficientvis/criterion.py",
             "cls = -(valid * p_cls + (1 - valid) * p_empty)", "cls = -(valid * p_cls)",
             (EV + "test_tracklet_cost_counts_empty_frames",)),
    Mutation("EfficientVIS", "TDC: RoIs of t-1 and t+1", "avis/models/efficientvis/stage.py",
             "nxt = torch.cat([rois[:, :, 1:], rois[:, :, -1:]], 2)", "nxt = rois",
             (EV + "test_tdc_weights_sum_to_one_over_three_frames",)),
    Mutation("EfficientVIS", "factorised attention: over time within a query", "avis/models/efficientvis/stage.py",
             "return self.spatial(self.temporal(q))", "return self.spatial(q)",
             (EV + "test_factorised_attention_time_within_query_then_queries_within_frame",)),
]


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def _pytest(root: Path, tests) -> tuple[bool, float]:
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=root,
                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return rc == 0, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=[""],
                    help="run the mutations whose method or part contains one of these")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if any(o.lower() in f"{m.method} {m.part}".lower() for o in args.only)]
    with tempfile.TemporaryDirectory(prefix="avis-mutation-") as tmp:
        root = Path(tmp)
        _copy_checkout(root)
        for m in chosen:  # every mutation must hit exactly one place
            n = (root / m.file).read_text().count(m.old)
            if n != 1:
                raise SystemExit(f"{m.file}: {m.old!r} occurs {n} times")
        tests = sorted({t for m in chosen for t in m.tests})
        ok, secs = _pytest(root, tests)
        if not ok:
            raise SystemExit("the unmutated checkout fails its tests: fix them first")
        print(f"unmutated: {len(tests)} tests pass ({secs:.0f} s)\n", file=sys.stderr)
        print("| method | part | test that fails without it | result |")
        print("| --- | --- | --- | --- |")
        survivors = 0
        for m in chosen:
            path = root / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            try:
                passed, secs = _pytest(root, m.tests)
            finally:
                path.write_text(original)
            survivors += passed
            names = ", ".join(f"`{t.split('::')[0].split('/')[-1]}::{t.split('::')[1]}`" for t in m.tests)
            print(f"| {m.method} | {m.part} (`{m.file}`) | {names} | {'SURVIVES' if passed else 'fails'} |",
                  flush=True)
        print(f"\n{len(chosen) - survivors} of {len(chosen)} mutations make their test fail", file=sys.stderr)
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
