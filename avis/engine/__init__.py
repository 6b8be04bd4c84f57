"""Training and evaluation engine: the hydra app (``avis train``), the trainer, checkpoints and resume, DDP
through ``torchrun``, evaluation (``avis eval``) and inference on raw videos (``avis infer``).

Modules: :mod:`.config` (where the hydra configs live), :mod:`.train` (the ``avis train`` app and
``train_experiment``), :mod:`.loop` (the training loop), :mod:`.optim` (parameter groups, poly schedule),
:mod:`.checkpoint` (atomic checkpoints with RNG states and data positions), :mod:`.dist` (torch.distributed
set-up), :mod:`.logs` (scalar logs), :mod:`.evaluate` (``avis eval``: evaluate a checkpoint or a model),
:mod:`.predict` (tracks -> YTVIS results, shards -> ground truth, timing), :mod:`.session` (a trained model
back from its checkpoint), :mod:`.infer` (``avis infer``). The data the engine trains on comes from
:mod:`avis.data`.
"""
