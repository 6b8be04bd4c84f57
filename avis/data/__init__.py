"""Training-side data: reading the shards ``avis build`` writes, and turning them into clips and batches.

``iter_videos(pattern)`` yields whole decoded videos (:class:`Video`); ``make_clip_loader`` streams batches in
the format of :mod:`avis.models.base` for training (single process, DataLoader workers, torchrun).
"""

from avis.data.shards import (
    decode_sample,
    expand_shards,
    iter_samples,
    iter_videos,
    lazy_video,
    load_manifest,
)
from avis.data.video import Instance, Video, VideoSource, audio_16k

__all__ = ["Instance", "Video", "VideoSource", "audio_16k", "decode_sample", "expand_shards", "iter_samples",
           "iter_videos", "lazy_video", "load_manifest", "make_clip_loader", "make_clip_pipeline"]


def __getattr__(name):  # the clip pipeline pulls in torch; import it only when asked for
    if name in ("make_clip_loader", "make_clip_pipeline"):
        from avis.data import clips

        return getattr(clips, name)
    raise AttributeError(name)
