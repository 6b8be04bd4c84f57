"""Training and evaluation engine: the hydra app (``avis train``), the loop, checkpoints and resume, DDP
through ``torchrun``, evaluation (``avis eval``) and inference on raw videos (``avis infer``).

Modules: :mod:`.config` (where the hydra configs live), :mod:`.data` (clip batches that are a deterministic
function of seed, epoch and rank, so that a resumed run sees the same data), :mod:`.optim` (parameter groups,
poly schedule), :mod:`.checkpoint` (atomic checkpoints with RNG states and data positions), :mod:`.dist`
(torch.distributed set-up), :mod:`.loop` (the training loop), :mod:`.predict` (tracks -> YTVIS results,
shards -> ground truth, timing), :mod:`.toy` (a tiny method and an in-memory dataset to test the engine).
"""
