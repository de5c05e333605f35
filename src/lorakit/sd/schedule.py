"""Which text is encoded at which sampling step: A1111's prompt editing, alternation and ``AND``
(``modules/prompt_parser.py``; composable diffusion: Liu et al. 2022, https://arxiv.org/abs/2206.01714).

- ``AND`` (a whole word, upper case) splits the prompt into sub-prompts; one ending in ``:w`` has weight w
  (default 1), so even a single prompt ``a cat:1.5`` has weight 1.5. The negative prompt is never split.
- ``[from:to:when]`` uses ``from`` up to step ``when``, then ``to``; ``[to:when]`` adds ``to`` after step
  ``when``; ``[from::when]`` removes ``from`` after it. ``when`` with a ``.`` is a fraction of the steps
  (``int(when * steps)``), else a step count (``1e1`` counts as 10 steps); both capped at ``steps``.
- ``[a|b|c]`` takes option ``(step - 1) % 3`` at step 1, 2, ...; empty options are allowed (``[fe|]male``).
- Constructs nest (``a[b:[c:d:2]:1]e``); inside them ``( )`` and ``[ ]`` keep their emphasis meaning.
  Unmatched ``[ ] ( ) :`` are text. A ``|`` outside an alternation, or a trailing lone ``\\``, makes the
  whole prompt plain text (A1111's parser rejects it and falls back to the text as written). Next to
  unmatched brackets an edit may be read as text, as A1111's parser does (see ``_Parser.top``).

The schedule of a text is A1111's list of ``(end_at_step, text)``: one entry per step at which anything
changes, the last ending at ``steps``. Sampling step ``i`` (0-based) uses the first entry with
``i <= end_at_step``, as A1111's sampler does, so ``[a:b:0.5]`` at 20 steps is ``[(10, 'a'), (20, 'b')]``
and draws ``a`` for steps 0..10, ``b`` for steps 11..19; ``[a|b]`` draws a, a, b, a, b, ... For samplers
that evaluate the model twice per step (Heun, DPM2) the step is the sampler's step, where A1111 counts
model evaluations (and, past ``steps`` evaluations, falls back to the first text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

re_and = re.compile(r"\bAND\b")
re_sub_weight = re.compile(r"\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*$")
re_number = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
re_space = re.compile(r"\s+")
SPECIAL = "[]():|"


def split_and(prompt: str) -> list[tuple[str, float]]:
    """[(sub-prompt, weight)] of a prompt split on ``AND``; a trailing ``:w`` is the weight (trailing spaces go)."""
    out = []
    for sub in re_and.split(prompt):
        m = re_sub_weight.search(sub)
        out.append((sub[:m.start()], float(m.group(1))) if m else (sub.rstrip(), 1.0))
    return out


@dataclass
class Edit:
    """``[before:after:when]``; ``before`` None when omitted (``[after:when]``)."""

    before: list | None
    after: list
    when: str
    source: str = ""


@dataclass
class Alternate:
    """``[a|b|...]``: one option per step in turn."""

    options: list[list]


class _Parser:
    """Recursive descent over A1111's prompt grammar; a node list is str | Edit | Alternate items.

    Inside a construct every bracket must parse (``(p)``, ``(p:p)``, ``[p]``, an edit, an alternation);
    at the top level a bracket or colon that does not is kept as text."""

    def __init__(self, text: str):
        self.text = text
        self.memo: dict[int, tuple[list, int] | None] = {}

    def plain(self, pos: int) -> int:
        """End of the run of text (escapes ``\\x`` included) starting at ``pos``."""
        text, i = self.text, pos
        while i < len(text):
            c = text[i]
            if c == "\\":
                if i + 1 < len(text) and text[i + 1] != "\n":
                    i += 2
                    continue
                break
            if c in SPECIAL:
                break
            i += 1
        return i

    def prompt(self, pos: int) -> tuple[list, int]:
        """The longest sequence of text and well-formed constructs from ``pos``."""
        nodes: list = []
        while pos < len(self.text):
            end = self.plain(pos)
            if end > pos:
                nodes.append(self.text[pos:end])
                pos = end
                continue
            found = self.construct(pos)
            if found is None:
                break
            node, pos = found
            nodes += node
        return nodes, pos

    def construct(self, pos: int) -> tuple[list, int] | None:
        """The bracket construct starting at ``pos`` (memoised: unmatched brackets are retried from outside)."""
        if pos not in self.memo:
            c = self.text[pos]
            self.memo[pos] = self.round(pos) if c == "(" else self.square(pos) if c == "[" else None
        return self.memo[pos]

    def round(self, pos: int):
        """``(p)`` or ``(p:p)``: kept with its brackets (emphasis is read later, per scheduled text)."""
        inner, end = self.prompt(pos + 1)
        out = ["(", *inner]
        if self.at(end) == ":":
            second, end = self.prompt(end + 1)
            out += [":", *second]
        return (out + [")"], end + 1) if self.at(end) == ")" else None

    def square(self, pos: int):
        """``[p]`` (de-emphasis, kept), an alternation ``[p|p...]`` or an edit ``[[p:]p:number]``."""
        first, end = self.prompt(pos + 1)
        c = self.at(end)
        if c == "]":
            return ["[", *first, "]"], end + 1
        if c == "|":
            options = [first]
            while self.at(end) == "|":
                option, end = self.prompt(end + 1)
                options.append(option)
            return ([Alternate(options)], end + 1) if self.at(end) == "]" else None
        if c == ":":
            if (when := self.when(end + 1)) is not None:
                return [Edit(None, first, when[0], self.text[pos:when[1]])], when[1]
            second, end = self.prompt(end + 1)
            if self.at(end) == ":" and (when := self.when(end + 1)) is not None:
                return [Edit(first, second, when[0], self.text[pos:when[1]])], when[1]
        return None

    def at(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def when(self, pos: int) -> tuple[str, int] | None:
        """(number text, position after ``]``) for ``[space]number[space]]`` at ``pos``, else None."""
        m = re_space.match(self.text, pos)
        pos = m.end() if m else pos
        num = re_number.match(self.text, pos)
        if num is None:
            return None
        end = num.end()
        m = re_space.match(self.text, end)
        end = m.end() if m else end
        return (num.group(0), end + 1) if self.at(end) == "]" else None

    def top(self) -> list | None:
        """The whole text as nodes, or None where A1111's parser fails (a stray ``|`` or lone ``\\``).

        Unmatched brackets next to an edit make A1111's grammar ambiguous, and its Earley parser's
        tie-break decides: checked against it, an edit directly followed by an even number of unmatched
        ``[ ] ( ) :`` is read as text, by an odd number as an edit. Prompts whose brackets all match are
        unambiguous."""
        nodes, pos = [], 0
        while pos < len(self.text):
            part, pos = self.prompt(pos)
            nodes += part
            start = pos
            while pos < len(self.text) and self.plain(pos) == pos and self.construct(pos) is None:
                if self.text[pos] not in "[]():":
                    return None
                pos += 1
            if (pos - start) % 2 == 0 and pos > start and nodes and isinstance(nodes[-1], Edit):
                nodes[-1] = nodes[-1].source
            if pos > start:
                nodes.append(self.text[start:pos])
        return nodes


def _steps_of(when: str, steps: int) -> int:
    value = float(when)
    return min(steps, int(value * steps if "." in when else value))


def _visit(nodes: list, steps: int, found: set[int]) -> bool:
    """Add every edit's step to ``found``; True if an alternation occurs anywhere."""
    alternates = False
    for node in nodes:
        if isinstance(node, Edit):
            at = _steps_of(node.when, steps)
            if at >= 1:
                found.add(at)
            alternates |= _visit(node.before or [], steps, found) | _visit(node.after, steps, found)
        elif isinstance(node, Alternate):
            alternates = True
            for option in node.options:
                _visit(option, steps, found)
    return alternates


def _text_at(nodes: list, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, Edit):
            chosen = (node.before or []) if step <= _steps_of(node.when, steps) else node.after
            out.append(_text_at(chosen, step, steps))
        elif isinstance(node, Alternate):
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(node)
    return "".join(out)


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """A1111's ``[(end_at_step, text), ...]`` for one (sub-)prompt; see the module docstring."""
    if steps < 1:
        raise ValueError(f"steps={steps}: expected at least 1.")
    try:
        nodes = _Parser(text).top()
    except RecursionError:  # brackets nested hundreds deep: read as text
        nodes = None
    if nodes is None:
        return [(steps, text)]
    found = {steps}
    if _visit(nodes, steps, found):
        found.update(range(1, steps + 1))
    return [(at, _text_at(nodes, at, steps)) for at in sorted(found)]


def text_at(schedule: list[tuple[int, str]], step: int) -> str:
    """The text sampling step ``step`` (0-based) uses: the first entry with ``step <= end_at_step``."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[0][1]  # A1111 falls back to the first entry
