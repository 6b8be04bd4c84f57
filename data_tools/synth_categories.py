"""The synthetic dataset's categories: one definition for the generator, the docs and the taxonomy file.

Eight sounding categories in four look-alike pairs. The members of a pair share a shape and a colour; on
their own they differ by a texture (stripes or checks), but in an *audio-dependent* video both are drawn
with the pair's shared look (solid colour), so only their sound tells them apart. Each category's sound is
described here and synthesised by :mod:`data_tools.synth_audio` (keyed by ``sound``).

``annotations/taxonomies/synthetic.json`` is written from :func:`taxonomy`; regenerate it after a change::

    python -m data_tools.synth_categories annotations/taxonomies/synthetic.json
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Pair:
    name: str
    shape: str  # see synth_render.SHAPES
    color: tuple[int, int, int]  # RGB of the shared look (and the base of the member looks)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    pair: str
    texture: str  # the member's own look: base colour with "stripes" or "checks" in a darker shade
    sound: str  # key of the signature in synth_audio
    sound_description: str


PAIRS: tuple[Pair, ...] = (
    Pair("disc", "disc", (240, 140, 40)),
    Pair("square", "square", (60, 120, 235)),
    Pair("triangle", "triangle", (70, 195, 90)),
    Pair("hexagon", "hexagon", (205, 70, 195)),
)

CATEGORIES: tuple[Category, ...] = (
    Category(1, "bell", "disc", "stripes", "bell",
             "struck bell: inharmonic partials (520, 1435, 2808 Hz) decaying in 0.15 s, restruck every 0.45 s"),
    Category(2, "siren", "disc", "checks", "siren",
             "siren: a tone whose pitch sweeps 600-900 Hz and back three times a second (FM)"),
    Category(3, "engine", "square", "stripes", "engine",
             "engine: harmonic stack on 110 Hz (10 harmonics, 1/k amplitudes) with a 25 Hz flutter (AM)"),
    Category(4, "fan", "square", "checks", "fan",
             "fan: steady band of noise, 1.5-3 kHz"),
    Category(5, "bird", "triangle", "stripes", "bird",
             "bird: short up-chirps 2-3.5 kHz, six per second"),
    Category(6, "cricket", "triangle", "checks", "cricket",
             "cricket: 4 kHz tone pulsed on and off 14 times a second"),
    Category(7, "drum", "hexagon", "stripes", "drum",
             "drum: low thumps (120 -> 60 Hz pitch drop, 0.08 s decay) with a noise click, 3.5 per second"),
    Category(8, "horn", "hexagon", "checks", "horn",
             "horn: square-like tone on 330 Hz (odd harmonics up to 4 kHz)"),
)

BY_ID = {c.id: c for c in CATEGORIES}
PAIR_OF = {p.name: p for p in PAIRS}


def twin(category_id: int) -> int:
    """The id of the other member of ``category_id``'s look-alike pair."""
    pair = BY_ID[category_id].pair
    return next(c.id for c in CATEGORIES if c.pair == pair and c.id != category_id)


def ytvis_categories() -> list[dict]:
    """The ``categories`` list of the dataset's YTVIS JSON (``supercategory`` = look-alike pair)."""
    return [{"id": c.id, "name": c.name, "supercategory": c.pair} for c in CATEGORIES]


def taxonomy() -> dict:
    """The content of ``annotations/taxonomies/synthetic.json``."""
    return {
        "name": "avis-synthetic",
        "description": "Categories of the synthetic audio-visual dataset written by `avis synth`. Members of a "
                       "look-alike pair share shape and colour; in audio-dependent videos they are drawn "
                       "identically and only their sound tells them apart.",
        "pairs": [{"name": p.name, "shape": p.shape, "color": list(p.color),
                   "members": [c.id for c in CATEGORIES if c.pair == p.name]} for p in PAIRS],
        "categories": [{"id": c.id, "name": c.name, "supercategory": c.pair, "pair": c.pair,
                        "twin": twin(c.id), "shape": PAIR_OF[c.pair].shape, "color": list(PAIR_OF[c.pair].color),
                        "texture": c.texture, "sound": c.sound_description} for c in CATEGORIES],
    }


if __name__ == "__main__":
    from avis.io.atomic import atomic_write_json

    target = sys.argv[1] if len(sys.argv) > 1 else "annotations/taxonomies/synthetic.json"
    atomic_write_json(taxonomy(), target, indent=2)
    print(f"wrote {target}")
