"""Training-side data: the one video type, reading the shards ``avis build`` writes, and the one clip pipeline.

* :mod:`avis.data.video`: :class:`Video` (+ :class:`Instance`), the :class:`VideoSource` protocol.
* :mod:`avis.data.shards`: ``iter_videos(pattern)`` yields whole decoded videos; :class:`ShardSource` is the
  training / evaluation source over shard files (lazy videos).
* :mod:`avis.data.clips`: :class:`ClipStream`, batches in the format of :mod:`avis.models.base` with exact
  resume and a per-rank / per-worker split of the shards (imported on first use: it pulls in torch).
"""

from avis.data.shards import (
    ShardSource,
    decode_sample,
    expand_shards,
    iter_samples,
    iter_videos,
    lazy_video,
    load_manifest,
)
from avis.data.video import Instance, Video, VideoSource, audio_16k

__all__ = ["ClipStream", "Instance", "Position", "ShardSource", "Video", "VideoSource", "audio_16k", "collate",
           "decode_sample", "expand_shards", "iter_samples", "iter_videos", "lazy_video", "load_manifest",
           "sample_clip"]


def __getattr__(name):  # the clip pipeline pulls in torch; import it only when asked for
    if name in ("ClipStream", "Position", "collate", "sample_clip"):
        from avis.data import clips

        return getattr(clips, name)
    raise AttributeError(name)
