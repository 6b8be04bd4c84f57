"""A checkpoint's config is data: parsed with limits, checked, and only then built.

A checkpoint carries the config it was trained with, and ``avis eval`` / ``avis infer`` build its model with
``hydra.utils.instantiate``. Whatever a ``_target_`` names is *called*, so a downloaded checkpoint could run
any code it likes. Here, before anything is built:

* the YAML is parsed by a safe loader within limits: at most :data:`MAX_CONFIG_BYTES` of text and
  :data:`MAX_CONFIG_NODES` nodes *after* alias expansion (a "billion laughs" of nested anchors is refused
  before it is expanded), at most :data:`MAX_CONFIG_DEPTH` levels;
* only plain values are accepted (mappings with string keys, lists, strings, numbers, booleans, null) and no
  ``${...}``: a checkpoint's config was resolved when it was saved, so an interpolation or a resolver
  (``oc.create``, ``oc.decode``, ``oc.env``, custom ones) can only be an attempt to build something the
  text does not show;
* every ``_target_`` must be *exactly* one of :data:`ALLOWED_TARGETS` (the builders avis registers in
  ``configs/`` and the torch classes they use). Prefixes are not enough: hydra follows attribute chains, so
  ``torch.nn.modules.module.torch.save`` or ``avis.models.rcf.builders.os.system`` start like trusted
  names and are not; ``_args_`` / ``_partial_`` / ``_recursive_`` / ``_convert_`` must have their types.

Overrides typed on the command line (``avis eval ... data.test_size=480``) are the user's own: they may
interpolate, and a ``_target_`` the user types is allowed too. The merged result is checked again (so an
override cannot be used to decode a string the checkpoint hid), and the caller gets it fully resolved, so what
is built is exactly what was checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import yaml
from omegaconf import DictConfig, OmegaConf

MAX_CONFIG_BYTES = 1 << 20  # a real config is a few KB
MAX_CONFIG_NODES = 10_000  # after expanding aliases; a real config has a few hundred
MAX_CONFIG_DEPTH = 64

# The exact callables a checkpoint's config may name: every ``_target_`` of ``configs/`` (tests check that
# this set covers them and that each name resolves), the other builders of the model packages, and the saved
# audio encoder's builder. ``AVIS_TRUSTED_TARGETS`` (comma-separated) adds names for your own builders.
ALLOWED_TARGETS: frozenset[str] = frozenset({
    # methods (configs/model)
    *(f"avis.models.rcf.rcf_{v}" for v in ("tiny", "r18", "r34", "r50", "r101", "swin_t", "swin_s", "swin_b", "swin_l")),
    *(f"avis.models.crossvis.{v}" for v in ("crossvis_tiny", "crossvis_r50", "condinst_vis_tiny",
                                             "condinst_vis_r50")),
    *(f"avis.models.inspro.inspro_{v}" for v in ("tiny", "r50", "r101")),
    *(f"avis.models.stmask.stmask_{v}" for v in ("tiny", "r50")),
    *(f"avis.models.efficientvis.efficientvis_{v}" for v in ("tiny", "r50", "r101")),
    # audio encoders (configs/audio; a saved encoder's builder, also under the name older demo runs gave it)
    "avis.models.audio.audio_tokens_tiny", "avis.models.audio.audio_tokens_vggish",
    "avis.models.audio.pretrained_audio_tokens", "avis.demo.pretrained_audio_tokens",
    # data (configs/data)
    "avis.data.shards.ShardSource",
    # optimisation (configs/optim): torch's optimisers used there and the engine's schedule
    "torch.optim.SGD", "torch.optim.AdamW", "torch.optim.Adam", "avis.engine.optim.PolyLR",
})
TRUSTED_TARGETS_ENV = "AVIS_TRUSTED_TARGETS"
_CONVERT_MODES = {"none", "partial", "object", "all"}
_PLAIN = (str, int, float, bool, type(None))


class Refused(ValueError):
    """The config is not acceptable; the message says why (the caller names the file)."""


def allowed_targets(extra: Iterable[str] = ()) -> frozenset[str]:
    env = {t.strip() for t in os.environ.get(TRUSTED_TARGETS_ENV, "").split(",") if t.strip()}
    return ALLOWED_TARGETS | env | set(extra)


def _show(value, limit: int = 80) -> str:
    """A hostile value, shortened and quoted for a message (the CLI escapes control characters)."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


# ------------------------------------------------------------------------------------------------ YAML

def _loader_class():
    try:  # OmegaConf's own loader (its float rules, no timestamps, duplicate keys refused): the same values
        from omegaconf._utils import get_yaml_loader  # as OmegaConf.create(text) would give

        base = get_yaml_loader()
    except ImportError:  # pragma: no cover - a future omegaconf without it
        base = yaml.SafeLoader

    class Loader(base):
        """Stops composing at the node and depth limits: the pure-Python parser is slow (about 80 us a
        node), so a long list must be refused while it is read, not after."""

        def __init__(self, stream):
            super().__init__(stream)
            self.nodes, self.depth = 0, 0

        def compose_node(self, parent, index):
            self.nodes += 1
            if self.nodes > MAX_CONFIG_NODES:
                raise Refused(f"has more than {MAX_CONFIG_NODES} nodes")
            self.depth += 1
            try:
                if self.depth > MAX_CONFIG_DEPTH:
                    raise Refused(f"is nested deeper than {MAX_CONFIG_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document once every alias is expanded, computed on the node graph without expanding it
    (aliases share their node; each distinct node is visited once). Raises :class:`Refused` beyond the
    limits or on a node that contains itself."""
    memo: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if depth > MAX_CONFIG_DEPTH:
            raise Refused(f"is nested deeper than {MAX_CONFIG_DEPTH} levels")
        if key in visiting:
            raise Refused("has an alias to a node that contains it (a recursive structure)")
        visiting.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                n += size(k, depth + 1) + size(v, depth + 1)
                if n > MAX_CONFIG_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                n += size(v, depth + 1)
                if n > MAX_CONFIG_NODES:
                    break
        visiting.discard(key)
        memo[key] = n
        if n > MAX_CONFIG_NODES:
            raise Refused(f"expands to more than {MAX_CONFIG_NODES} nodes (anchors and aliases are counted "
                          "as copies)")
        return n

    return size(root, 0)


def parse(text) -> dict:
    """The YAML text of a checkpoint's config -> plain nested dicts / lists / scalars, within the limits."""
    if not isinstance(text, str):
        raise Refused(f"is a {type(text).__name__}, not YAML text")
    n = len(text.encode("utf-8", "surrogatepass"))
    if n > MAX_CONFIG_BYTES:
        raise Refused(f"is {n} bytes, larger than the {MAX_CONFIG_BYTES} byte limit")
    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise Refused("is empty")
        _expanded_size(node)
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())[:200]
        raise Refused(f"is not valid YAML ({first})") from None
    except Refused:
        raise
    except RecursionError:
        raise Refused(f"is nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise Refused(f"has a value Python cannot read ({str(e)[:120]})") from None
    except Exception as e:  # noqa: BLE001 - whatever else the constructor meets is the text's fault
        raise Refused(f"could not be read ({type(e).__name__}: {str(e)[:120]})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise Refused(f"is a YAML {type(data).__name__}, not a mapping")
    check(data)
    return data


# ------------------------------------------------------------------------------------------------ checks

def check(data, extra_targets: Iterable[str] = ()) -> None:
    """Raise :class:`Refused` unless ``data`` (plain containers) is plain data whose ``_target_`` entries are
    all allowed (:func:`allowed_targets`) and whose hydra keys have the types hydra expects."""
    allowed = allowed_targets(extra_targets)

    def walk(node, where: str, depth: int) -> None:
        if depth > MAX_CONFIG_DEPTH:
            raise Refused(f"is nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(node, dict):
            for k in node:
                if not isinstance(k, str):
                    raise Refused(f"{where or 'top level'}: key {_show(k)} is not a string")
                if "${" in k:
                    raise Refused(f"{where}{k!s:.80}: an interpolation in a key")
            _check_hydra_keys(node, where, allowed)
            for k, v in node.items():
                walk(v, f"{where}{k}.", depth + 1)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}{i}.", depth + 1)
        elif isinstance(node, str):
            if "${" in node:
                raise Refused(f"{where.rstrip('.')}: {_show(node)} is an interpolation; a checkpoint's config "
                              "is data (it was resolved when it was saved): no '${...}', no resolvers")
        elif not isinstance(node, _PLAIN):
            raise Refused(f"{where.rstrip('.')}: a {type(node).__name__} value; only plain values are allowed")

    walk(data, "", 0)


def _check_hydra_keys(node: dict, where: str, allowed: frozenset[str]) -> None:
    if "_target_" in node:
        t = node["_target_"]
        if not isinstance(t, str) or t not in allowed:
            raise Refused(f"{where}_target_ {_show(t)} is not one of the builders avis registers: it names code "
                          "to run; refusing to build anything from it")
    if "_args_" in node and not isinstance(node["_args_"], list):
        raise Refused(f"{where}_args_ must be a list, got {_show(node['_args_'])}")
    for flag in ("_partial_", "_recursive_"):
        if flag in node and not isinstance(node[flag], bool):
            raise Refused(f"{where}{flag} must be true or false, got {_show(node[flag])}")
    if "_convert_" in node and node["_convert_"] not in _CONVERT_MODES:
        raise Refused(f"{where}_convert_ must be one of {sorted(_CONVERT_MODES)}, got {_show(node['_convert_'])}")


def _typed_targets(overrides_cfg: DictConfig) -> set[str]:
    """The ``_target_`` values written literally in the user's overrides."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            t = node.get("_target_")
            if isinstance(t, str) and "${" not in t:
                found.add(t)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(OmegaConf.to_container(overrides_cfg, resolve=False))
    return found


def checkpoint_config(text, overrides: Iterable[str] = ()) -> DictConfig:
    """A checkpoint's config text and the user's ``key=value`` overrides -> a fully resolved DictConfig with
    no interpolations left, every ``_target_`` allowed. Raises :class:`Refused` for the checkpoint's own
    problems and :class:`OverrideError` for the overrides'."""
    return with_overrides(parse(text), overrides)


def with_overrides(data: dict, overrides: Iterable[str] = ()) -> DictConfig:
    """Checked plain ``data`` (:func:`parse`) and the user's overrides -> the resolved, checked DictConfig."""
    cfg = OmegaConf.create(data)  # no "${": nothing is interpreted
    overrides = list(overrides or [])
    if not overrides:
        return cfg
    try:
        ov = OmegaConf.from_dotlist(overrides)
        typed = _typed_targets(ov)
        merged = OmegaConf.to_container(OmegaConf.merge(cfg, ov), resolve=True, throw_on_missing=False)
    except Exception as e:  # noqa: BLE001 - omegaconf's grammar, resolver and merge errors
        raise OverrideError(f"bad override ({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    try:
        check(merged, extra_targets=typed)
    except Refused as e:
        raise OverrideError(f"the config with your overrides: {e}") from None
    return OmegaConf.create(merged)


class OverrideError(ValueError):
    """The command-line overrides are wrong (the user's text, not the checkpoint's)."""
