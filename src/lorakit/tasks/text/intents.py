"""Home Assistant intent data for the quickstart: English sentence templates from the
``home-assistant-intents`` package, expanded at random with ``hassil``'s parsed expressions.

The split is by *template*: each intent's templates are shuffled and two fractions are held out, one
for validation (choosing hyperparameters) and one for the test, so every validation or test sentence
comes from a template that no training sentence came from (new phrasings, not just new slot values).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: stand-ins for the user's own entities, areas and floors (Home Assistant fills these at run time)
NAMES = ["kitchen light", "living room lamp", "ceiling fan", "garage door", "front door lock", "tv",
         "bedroom heater", "porch light", "coffee maker", "desk lamp", "hallway speaker", "air purifier"]
AREAS = ["kitchen", "living room", "bedroom", "garage", "office", "bathroom", "hallway", "garden"]
FLOORS = ["upstairs", "downstairs", "first floor", "basement", "attic"]


@dataclass
class IntentArgs:
    language: str = "en"
    """Language of the Home Assistant intent templates (home-assistant-intents' code)."""
    intents: list[str] | None = None
    """Intents to use; ``None`` takes every intent with at least ``min_templates`` usable templates."""
    min_templates: int = 5
    """Intents with fewer usable templates are left out (at least 3: one each for train, validation, test)."""
    max_intents: int | None = None
    """Keep only the N intents with the most templates."""
    test_fraction: float = 0.25
    """Fraction of each intent's templates held out for the test set (at least one)."""
    val_fraction: float = 0.15
    """Fraction of each intent's templates held out for validation (at least one)."""
    sentences_per_template: int = 4
    """Random sentences expanded from each template (duplicates dropped)."""
    max_train_per_intent: int = 60
    """Cap on training sentences per intent."""
    max_test_per_intent: int = 20
    """Also the cap for validation sentences."""
    seed: int = 0
    """Seed of the template split and the sentence expansion."""
    extra: dict = field(default_factory=dict)


def _expand(expr, rng: random.Random, lists: dict, rules: dict, depth: int = 0) -> str:
    """One random sentence from a hassil expression tree."""
    from hassil.expression import Alternative, ListReference, Permutation, RuleReference, Sequence, TextChunk
    from hassil.intents import RangeSlotList, TextSlotList

    if depth > 50:
        raise ValueError("template nesting too deep")
    if isinstance(expr, TextChunk):
        return expr.original_text
    if isinstance(expr, Alternative):
        return _expand(rng.choice(expr.items), rng, lists, rules, depth + 1) if expr.items else ""
    if isinstance(expr, Permutation):
        items = list(expr.items)
        rng.shuffle(items)
        return " ".join(_expand(i, rng, lists, rules, depth + 1) for i in items)
    if isinstance(expr, Sequence):
        return "".join(_expand(i, rng, lists, rules, depth + 1) for i in expr.items)
    if isinstance(expr, RuleReference):
        return _expand(rules[expr.rule_name].expression, rng, lists, rules, depth + 1)
    if isinstance(expr, ListReference):
        slot = lists[expr.list_name]
        if isinstance(slot, TextSlotList):
            return _expand(rng.choice(slot.values).text_in, rng, lists, rules, depth + 1)
        if isinstance(slot, RangeSlotList):
            return str(rng.randrange(slot.start, slot.stop + 1, slot.step))
        raise KeyError(expr.list_name)
    raise TypeError(f"unexpected hassil expression {type(expr).__name__}")


def _templates(args: IntentArgs):
    """{intent: [(sentence, lists, rules), ...]} with wildcard templates left out."""
    from hassil.errors import MissingListError, MissingRuleError
    from hassil.intents import Intents, TextSlotList, WildcardSlotList
    from home_assistant_intents import get_intents

    data = get_intents(args.language)
    if data is None:
        raise ValueError(f"home-assistant-intents has no language {args.language!r}.")
    intents = Intents.from_dict(data)
    base_lists = {**intents.slot_lists, "name": TextSlotList.from_strings(NAMES),
                  "area": TextSlotList.from_strings(AREAS), "floor": TextSlotList.from_strings(FLOORS)}
    out: dict[str, list] = {}
    for name, intent in intents.intents.items():
        if args.intents is not None and name not in args.intents:
            continue
        for block in intent.data:
            lists = {**base_lists, **block.slot_lists}
            rules = {**intents.expansion_rules, **block.expansion_rules}
            for sentence in block.sentences:
                try:
                    used = sentence.list_names(rules)
                except (MissingRuleError, MissingListError, KeyError):
                    continue
                if any(u in block.wildcard_list_names or u not in lists or isinstance(lists[u], WildcardSlotList)
                       for u in used):
                    continue
                out.setdefault(name, []).append((sentence, lists, rules))
    return out


def intent_splits(args: IntentArgs) -> tuple[dict[str, list[dict]], dict]:
    """({"train", "val", "test": rows}, info), rows as ``{"text", "label", "template"}``, split by template."""
    if args.min_templates < 3:
        raise ValueError(f"quickstart.min_templates={args.min_templates}: each intent needs at least 3 templates "
                         "(one for the test, one for validation, one to train on); set it to 3 or more.")
    rng = random.Random(args.seed)
    by_intent = _templates(args)
    if args.intents is not None:
        missing = sorted(set(args.intents) - set(by_intent))
        if missing:
            raise ValueError(f"quickstart.intents: {missing} have no usable templates; choose from {sorted(by_intent)}.")
    chosen = sorted((n for n, t in by_intent.items() if len(t) >= args.min_templates),
                    key=lambda n: (-len(by_intent[n]), n))[: args.max_intents]
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for name in sorted(chosen):
        templates = list(enumerate(by_intent[name]))
        rng.shuffle(templates)
        n_test = max(1, round(args.test_fraction * len(templates)))
        n_val = max(1, round(args.val_fraction * len(templates)))
        parts = (("test", templates[:n_test], args.max_test_per_intent),
                 ("val", templates[n_test:n_test + n_val], args.max_test_per_intent),
                 ("train", templates[n_test + n_val:], args.max_train_per_intent))
        for split, part, limit in parts:
            rows, seen = [], set()
            for tid, (sentence, lists, rules) in part:
                for _ in range(args.sentences_per_template):
                    text = " ".join(_expand(sentence.expression, rng, lists, rules).split())
                    if text and text not in seen:
                        seen.add(text)
                        rows.append({"text": text, "label": name, "template": f"{name}/{tid}"})
            rng.shuffle(rows)
            splits[split] += rows[:limit]
    rng.shuffle(splits["train"])
    seen = {r["text"] for r in splits["train"]}  # two templates can produce the same sentence
    for split in ("val", "test"):
        splits[split] = [r for r in splits[split] if r["text"] not in seen]
        seen |= {r["text"] for r in splits[split]}
    info = {"intents": sorted(chosen)}
    for split, rows in splits.items():
        info[split], info[f"{split}_templates"] = len(rows), len({r["template"] for r in rows})
    return splits, info
