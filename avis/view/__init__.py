"""``avis view``: a static HTML page to look at results rather than read them.

    avis view runs/av/eval --shards shards/val --out view/av                    # an avis eval folder
    avis view runs/av/eval --compare runs/vis/eval --shards shards/val --out view/av_vs_vis
    avis view results.json --gt val.json --videos data/videos --out view/mine   # any YTVIS results file
    avis view runs/av/eval --shards shards/val --out view/av --serve            # and serve it on 127.0.0.1

The page (``OUT/index.html``) opens from ``file://`` with no server: each video plays with its sound while the
masks of the ground truth and of every run are drawn beside it, synchronised to the playing time, toggled per
track and per category; a sortable table lists each ground-truth instance's IoU and score in every run; RCF
attention maps are shown where the run kept them (``avis eval --keep-attention``). See docs/view.md.

From Python: :func:`write_view` (returns the page's path).
"""

from __future__ import annotations

import argparse

from avis.view.page import DEFAULT_THRESHOLD, write_view

__all__ = ["write_view"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_OR_RESULTS",
                        help="an avis eval / infer output folder, a training run folder (its newest eval/step_*), "
                             "or a YTVIS results JSON")
    parser.add_argument("--gt", metavar="GT.json",
                        help="ground truth (default: gt.json or videos.json beside the results)")
    parser.add_argument("--videos", metavar="DIR",
                        help="folder the ground truth's video_file / audio_file / file_names are relative to")
    parser.add_argument("--shards", nargs="+", metavar="SHARDS",
                        help="shards with the videos' frames and sound (as avis eval takes them); preferred over "
                             "--videos: the frames the model saw")
    parser.add_argument("--compare", nargs="+", default=[], metavar="OTHER",
                        help="other runs on the same videos (e.g. the visual-only one), shown side by side")
    parser.add_argument("--labels", nargs="+", metavar="NAME", help="one name per run (default: folder names)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (index.html, media/, data/)")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_THRESHOLD, metavar="S",
                        help=f"the page starts by showing predictions with score >= S (default {DEFAULT_THRESHOLD}; "
                             "a slider changes it)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N videos (by id)")
    parser.add_argument("--title", help="the page's title (default: the run labels)")
    parser.add_argument("--serve", action="store_true",
                        help="then serve OUT on http://127.0.0.1:PORT until interrupted (not needed: the page "
                             "works from file://)")
    parser.add_argument("--port", type=int, default=8765, help="port for --serve (default 8765; 0: any free)")


def run(args: argparse.Namespace) -> int:
    index = write_view(args.run, args.out, gt=args.gt, videos_dir=args.videos, shards=args.shards,
                       compare=args.compare, labels=args.labels, score_threshold=args.score_threshold,
                       limit=args.limit, title=args.title)
    print(f"page: {index.resolve().as_uri()}")
    if args.serve:
        from avis.view.serve import serve

        server = serve(index.parent, args.port)
        host, port = server.server_address[:2]
        print(f"serving {index.parent} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    return 0
