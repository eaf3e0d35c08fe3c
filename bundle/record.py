"""bundle.json as a typed record: written by `make export`, read once by `make predict`, every field checked
for type, range and length against the bundle's own labels before any file it names is loaded.

A bundle edited by hand and re-hashed (used without DIGEST=) passes the manifest; this record is what refuses
its nonsense (thresholds of another length or NaN, negative blend weights, a member kind nobody knows, a weight
name outside its member's folder) as one error naming the field.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import PurePosixPath

from bundle.manifest import AGAIN, FORMAT
from competition.errors import UserError
from competition.metrics import OBJECTIVES
from competition.records import field_problems
from pipelines.inference import InferenceRecord
from submissions.blend_file import FORMS, MEAN_METHODS

WEIGHT_SUFFIX = {"image": ".safetensors", "captions": ".npz"}  # a member's kind: what its weight files are
THRESHOLD_MAX = 1.0 + 1e-9  # a threshold just above the largest probability (thresholds.cuts) predicts nothing


@dataclasses.dataclass(frozen=True)
class MemberRecord:
    """One member as shipped: which weight files predict (its refit, or every fold model), its shared parts."""
    name: str
    kind: str                                   # image | captions (WEIGHT_SUFFIX)
    weights: tuple[str, ...]                    # members/<name>/...: averaged, each a fit of the member
    shared: tuple[str, ...]                     # shared/<sha256>...: a sentence encoder the fits read
    refit: bool
    uses: str                                   # "refit" | "<k> fold models", for the log
    inference: tuple[InferenceRecord, ...] = ()  # image members: one per weight file

    @property
    def reads_captions(self) -> bool:
        return self.kind == "captions" or any(r.net.caption_input != "none" for r in self.inference)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "inference"}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        return out | ({"inference": [r.to_json() for r in self.inference]} if self.kind == "image" else {})


@dataclasses.dataclass(frozen=True)
class BlendRecord:
    method: str                                 # a mean method, or a stacker whose second level is `file`
    weights: tuple[float, ...] | None           # mean methods: one per member, >= 0 (None: equal)
    file: str | None                            # stackers: blend.npz or blend.skops (blend_file.FORMS)


@dataclasses.dataclass(frozen=True)
class Scores:
    oof: float
    nested: float | None


@dataclasses.dataclass(frozen=True)
class BundleRecord:
    format: int
    competition: str
    submission: str
    tokens: tuple[str, ...]
    members: tuple[MemberRecord, ...]
    blend: BlendRecord
    thresholds: tuple[float, ...]               # in the order of `tokens` (a probability metric's: temperatures)
    metric: str
    scores: Scores

    def to_json(self) -> dict:
        return {"format": self.format, "competition": self.competition, "submission": self.submission,
                "tokens": list(self.tokens), "members": [m.to_json() for m in self.members],
                "blend": {"method": self.blend.method,
                          "weights": None if self.blend.weights is None else list(self.blend.weights),
                          "file": self.blend.file},
                "thresholds": list(self.thresholds), "metric": self.metric,
                "scores": dataclasses.asdict(self.scores)}

    def names(self) -> list[str]:
        """Every file or folder the record names, for the manifest check."""
        named = [n for m in self.members for n in (*m.weights, *m.shared)]
        return named + ([self.blend.file] if self.blend.file else [])

    @classmethod
    def from_json(cls, data, where: str) -> BundleRecord:
        """The record as `make export` wrote it; anything else is one UserError naming the field."""
        def refuse(problem: str):
            raise UserError(f"{where}: {problem}; {AGAIN}")
        if not isinstance(data, dict):
            refuse(f"not a bundle record (a JSON {type(data).__name__})")
        if data.get("format") != FORMAT:
            refuse(f"format {data.get('format')!r}, not {FORMAT}")
        checked(cls, data, "", refuse)
        tokens = tuple(data["tokens"])
        if not tokens or len(set(tokens)) != len(tokens):
            refuse(f"tokens {list(tokens)[:5]}...: empty or repeated")
        if not data["members"]:
            refuse("members: none (a bundle predicts with at least one)")
        members = tuple(member(m, f"members[{i}]", len(tokens), where, refuse) for i, m in enumerate(data["members"]))
        if len({m.name for m in members}) != len(members):
            refuse("members: a name listed twice")
        blend = checked(BlendRecord, data["blend"], "blend.", refuse)
        blend = BlendRecord(blend["method"], None if blend["weights"] is None else tuple(blend["weights"]),
                            blend["file"])
        check_blend(blend, len(members), refuse)
        thresholds = tuple(float(t) for t in data["thresholds"])
        if len(thresholds) != len(tokens):
            refuse(f"thresholds: {len(thresholds)} values for {len(tokens)} labels")
        if data["metric"] not in OBJECTIVES:
            refuse(f"metric {data['metric']!r}: not a metric ({', '.join(OBJECTIVES)})")
        temperatures = OBJECTIVES[data["metric"]].probabilities  # a probability submission's last step
        bad = [f"{t}={v}" for t, v in zip(tokens, thresholds)
               if not (0 < v < math.inf if temperatures else 0 <= v <= THRESHOLD_MAX)]
        if bad:
            refuse(f"thresholds (the temperatures of a {data['metric']} submission) not > 0: {', '.join(bad[:5])}"
                   if temperatures else f"thresholds outside [0, 1]: {', '.join(bad[:5])}")
        scores = checked(Scores, data["scores"], "scores.", refuse)
        return cls(FORMAT, data["competition"], data["submission"], tokens, members, blend, thresholds,
                   data["metric"], Scores(**scores))


def checked(cls, data, prefix: str, refuse) -> dict:
    problems = field_problems(cls, data) if isinstance(data, dict) else [f"not an object ({type(data).__name__})"]
    if problems:
        refuse(f"{prefix.rstrip('.') or 'record'}: " + "; ".join(f"{prefix}{p}" for p in problems))
    return data


def inside(name: str, folder: str) -> bool:
    """`name` is a plain relative path under `folder` (the manifest check then says whether the bundle holds it)."""
    path, top = PurePosixPath(name), PurePosixPath(folder).parts
    return (not path.is_absolute() and ".." not in path.parts and "\\" not in name
            and len(path.parts) > len(top) and path.parts[:len(top)] == top)


def member(data, at: str, n_labels: int, where: str, refuse) -> MemberRecord:
    if isinstance(data, dict) and data.get("kind") != "image":  # only image members carry inference records
        data = {"inference": []} | data
    fields = checked(MemberRecord, data, f"{at}.", refuse)
    name, kind = fields["name"], fields["kind"]
    if kind not in WEIGHT_SUFFIX:
        refuse(f"{at}.kind={kind!r}: not a member kind ({', '.join(WEIGHT_SUFFIX)})")
    if not name or "/" in name or name.startswith("."):
        refuse(f"{at}.name={name!r}: not a member folder's name")
    if not fields["weights"]:
        refuse(f"{at}.weights: none")
    for w in fields["weights"]:
        if not inside(w, f"members/{name}") or not w.endswith(WEIGHT_SUFFIX[kind]):
            refuse(f"{at}.weights: {w!r} is not a {WEIGHT_SUFFIX[kind]} file under members/{name}/")
    for s in fields["shared"]:
        if not inside(s, "shared"):
            refuse(f"{at}.shared: {s!r} is not under shared/")
    records = ()
    if kind == "image":
        if len(fields["inference"]) != len(fields["weights"]):
            refuse(f"{at}.inference: {len(fields['inference'])} records for {len(fields['weights'])} weight files")
        records = tuple(InferenceRecord.from_json(r, f"{where}: {w}")
                        for w, r in zip(fields["weights"], fields["inference"]))
        wrong = [w for w, r in zip(fields["weights"], records) if r.num_classes != n_labels]
        if wrong:
            refuse(f"{at}: {wrong[0]} predicts another number of labels than the bundle's {n_labels}")
        if any(r.net.caption_input != "none" for r in records) and len(fields["shared"]) != 1:
            refuse(f"{at}.shared: {len(fields['shared'])} parts; a member that reads captions ships its one encoder")
    elif fields.get("inference"):
        refuse(f"{at}.inference: a {kind} member has no inference records")
    return MemberRecord(name, kind, tuple(fields["weights"]), tuple(fields["shared"]), fields["refit"],
                        fields["uses"], records)


def check_blend(blend: BlendRecord, n_members: int, refuse) -> None:
    """A mean blend is its method and weights; a stacked one is its saved second level, whose form its file's suffix
    names (the method is then its name only: the file's arithmetic is all make predict applies)."""
    files = [f"blend.{suffix}" for suffix in FORMS]
    if blend.file is None:
        if blend.method not in MEAN_METHODS:
            refuse(f"blend.method={blend.method!r}: not a blend (a mean blend, {', '.join(MEAN_METHODS)}, or a "
                   f"stacked one with its second level, {' or '.join(files)})")
        w = blend.weights
        if w is not None and (len(w) != n_members or min(w) < 0 or not math.isfinite(sum(w)) or sum(w) <= 0):
            refuse(f"blend.weights={list(w)}: one weight >= 0 per member ({n_members}), not all 0")
    else:
        if blend.method in MEAN_METHODS:
            refuse(f"blend.file={blend.file!r}: a {blend.method} blend has no saved second level")
        if blend.weights is not None:
            refuse(f"blend.weights: a {blend.method} blend has none (its second level is the file)")
        if blend.file not in files:
            refuse(f"blend.file={blend.file!r}: a stacked blend's second level is {' or '.join(files)}")
